#!/usr/bin/env python3
"""Write fixtures/legacy/: checkpoints as Python 2 era torch wrote them, built opcode by opcode.

    .venv/bin/python scripts/make-legacy-fixtures.py

torch 2.13 under Python 3 cannot write any of these: Python 3's pickle builds an OrderedDict as an empty one plus
SETITEMS and writes `str` as BINUNICODE, torch >= 0.4 writes `_rebuild_tensor_v2`, and torch >= 0.1.10 no longer
writes the tar format. So each byte group below is written by hand, in the order the upstream code writes it:

  - CPython 2.7 Lib/pickle.py (`Pickler.save_string`, `save_int`, `save_tuple`, `save_list` / `_batch_appends`,
    `save_dict` / `_batch_setitems`, `save_global`, `save_reduce`, `save_pers`, `memoize`): protocol 2 opcodes,
    every str/tuple/list/dict/global/reduce result memoized with BINPUT, a `str` as SHORT_BINSTRING (`U`, length
    < 256) or BINSTRING (`T`, 4-byte length), an int that fits 4 signed bytes as BININT1/BININT2/BININT, larger
    ones as INT text, a `long` as LONG1.
  - CPython 2.7 Lib/collections.py `OrderedDict.__reduce__`: `(cls, (items,), inst_dict)` with items a list of
    `[key, value]` lists and inst_dict the instance `__dict__` (torch's `_metadata`), written by save_reduce as
    GLOBAL, the args tuple, REDUCE, then the state and BUILD.
  - torch 0.3 torch/tensor.py `_TensorBase.__reduce__` -> `(torch._utils._rebuild_tensor, (storage,
    storage_offset, tuple(size), stride))`; torch 0.3/0.4 torch/serialization.py `_save`: pickles of the magic
    number, protocol version 1001 and sys_info, the main pickle whose storages are persistent ids
    `('storage', torch.<T>Storage, str(root._cdata), location, root.size(), view_metadata)` (view_metadata
    `(str(view._cdata), offset, view.size())` for a storage view, else None), the sorted list of root keys, then
    each root storage as `_write_file` writes it: an int64 element count and the raw little-endian bytes.
  - torch 0.1.x torch/serialization.py `_save` (the tar format): `tarfile.open(mode='w:', format=PAX_FORMAT)`
    with members `sys_info`, `pickle` (persistent ids `str(obj._cdata)` for tensors and storages), `tensors`
    (a pickled count, then per tensor a pickled `(key, storage_id, type(tensor))` and `_write_metadata`: int64
    ndim, ndim int64 sizes, ndim int64 strides, int64 storage offset) and `storages` (a pickled count, then per
    storage a pickled `(key, location, torch.<T>Storage)` and `_write_file`, then the pickled list of storage
    views `(view_key, root_key, offset, size)`). torch 2.13 reads it in `_legacy_load.legacy_load`.

Each file is loaded back with torch.load(weights_only=False, map_location='cpu') here (except the one torch must
refuse), so a fixture torch 2.13 does not read as intended fails this script. Deterministic: rerunning writes the
same bytes (tar member mtimes are fixed).
"""

import io
import json
import os
import struct
import sys
import tarfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "fixtures", "legacy")

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch/serialization.py
PROTOCOL_VERSION = 1001


class Py2Pickler:
    """Protocol 2 opcodes as CPython 2.7's Lib/pickle.py writes them. Values are passed as tagged calls (there
    is no Python 2 object here): each method writes one value the way `Pickler.save` dispatches it."""

    def __init__(self):
        self.out = bytearray()
        self.memo = 0
        self.shared = {}  # name -> memo index, for objects Python 2 would find in the memo (same object again)

    def op(self, b):
        self.out += b

    # memoize(obj): BINPUT i (i < 256) or LONG_BINPUT i.
    def put(self, name=None):
        i = self.memo
        self.memo += 1
        self.op(b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))
        if name is not None:
            self.shared[name] = i
        return i

    # A memo hit: BINGET i or LONG_BINGET i.
    def get(self, name):
        i = self.shared[name]
        self.op(b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))

    def once(self, name, write):
        """An object Python 2 pickles once and then finds in the memo (a string constant, a class)."""
        if name in self.shared:
            self.get(name)
        else:
            write()
            self.put(name)

    def proto(self):
        self.op(b"\x80\x02")  # PROTO 2

    def stop(self):
        self.op(b".")

    # save_string, bin branch: SHORT_BINSTRING `U` + 1-byte length, or BINSTRING `T` + 4-byte length; memoized.
    def str_(self, b, name=None):
        if isinstance(b, str):
            b = b.encode("utf-8")
        if name is not None and name in self.shared:
            return self.get(name)
        if len(b) < 256:
            self.op(b"U" + bytes([len(b)]) + b)
        else:
            self.op(b"T" + struct.pack("<i", len(b)) + b)
        self.put(name)

    # save_int, bin branch: BININT1 `K`, BININT2 `M`, BININT `J`; past 4 signed bytes INT text `I...\n`.
    def int_(self, v):
        if 0 <= v <= 0xFF:
            self.op(b"K" + bytes([v]))
        elif 0 <= v <= 0xFFFF:
            self.op(b"M" + struct.pack("<H", v))
        elif -(2**31) <= v < 2**31:
            self.op(b"J" + struct.pack("<i", v))
        else:
            self.op(b"I" + str(v).encode() + b"\n")

    # save_long, proto 2: LONG1 `\x8a` + 1-byte length + little-endian two's complement.
    def long_(self, v):
        n = (v.bit_length() + 8) // 8
        self.op(b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True))

    def none(self):
        self.op(b"N")

    def bool_(self, v):
        self.op(b"\x88" if v else b"\x89")  # NEWTRUE / NEWFALSE

    # save_global: GLOBAL `c` module\n name\n, memoized (a second use is a memo hit).
    def global_(self, module, name):
        self.once(f"global:{module}.{name}", lambda: self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n"))

    # save_tuple, proto 2: () -> EMPTY_TUPLE (not memoized); 1-3 items -> items + TUPLE1/2/3; more -> MARK items
    # TUPLE; memoized.
    def tuple_(self, writers):
        if not writers:
            self.op(b")")
            return
        if len(writers) > 3:
            self.op(b"(")
        for w in writers:
            w()
        self.op({1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(writers), b"t"))
        self.put()

    # save_list: EMPTY_LIST, memoized, then _batch_appends: one item -> item APPEND; more -> MARK items APPENDS.
    def list_(self, writers):
        self.op(b"]")
        self.put()
        if len(writers) == 1:
            writers[0]()
            self.op(b"a")
        elif writers:
            self.op(b"(")
            for w in writers:
                w()
            self.op(b"e")

    # save_dict: EMPTY_DICT, memoized, then _batch_setitems: one item -> k v SETITEM; more -> MARK k v... SETITEMS.
    def dict_(self, items):
        self.op(b"}")
        self.put()
        if len(items) == 1:
            k, v = items[0]
            k()
            v()
            self.op(b"s")
        elif items:
            self.op(b"(")
            for k, v in items:
                k()
                v()
            self.op(b"u")

    # save_reduce(func, args, state): func, args tuple, REDUCE, memoize; then state and BUILD.
    def reduce(self, func, args, state=None):
        func()
        self.tuple_(args)
        self.op(b"R")
        self.put()
        if state is not None:
            state()
            self.op(b"b")

    # Lib/collections.py OrderedDict.__reduce__: (OrderedDict, ([[k, v], ...],), inst_dict or omitted).
    def ordered_dict(self, items, inst_dict=None):
        pairs = [(lambda k=k, v=v: self.list_([k, v])) for k, v in items]
        self.reduce(lambda: self.global_("collections", "OrderedDict"), [lambda: self.list_(pairs)],
                    None if inst_dict is None else (lambda: self.dict_(inst_dict)))

    # save_pers(pid): the persistent id, then BINPERSID.
    def persistent(self, write_pid):
        write_pid()
        self.op(b"Q")


class Storage:
    """A storage as old torch held it: a key (str(root._cdata)), type, location and its elements."""

    def __init__(self, key, tensor, location="cpu"):
        self.key = str(key)
        self.data = tensor.contiguous().reshape(-1)
        self.type = {torch.float32: "FloatStorage", torch.float64: "DoubleStorage", torch.int64: "LongStorage",
                     torch.float16: "HalfStorage", torch.uint8: "ByteStorage"}[self.data.dtype]
        self.location = location

    def raw(self):
        """`_write_file`: int64 element count, then the raw bytes."""
        return struct.pack("<q", self.data.numel()) + self.data.numpy().tobytes()


def torch03_pid(p, s, view=None):
    """torch 0.3/0.4 `persistent_id` of a storage: ('storage', type, root key, location, root size, view)."""
    def pid():
        p.op(b"(")  # 6 items: MARK ... TUPLE
        p.str_("storage", name="str:storage")  # a constant of persistent_id: memo hit after the first
        p.global_("torch", s.type)
        p.str_(s.key)
        p.str_(s.location, name=f"str:{s.location}" if s.location == "cpu" else None)
        p.int_(s.data.numel())
        if view is None:
            p.none()
        else:
            view_key, offset, size = view
            p.tuple_([lambda: p.str_(view_key), lambda: p.int_(offset), lambda: p.int_(size)])
        p.op(b"t")
        p.put()
    p.persistent(pid)


def tensor_v1(p, s, offset, size, stride, view=None):
    """torch 0.3 `_TensorBase.__reduce__`: `_rebuild_tensor(storage, storage_offset, size, stride)`."""
    p.reduce(lambda: p.global_("torch._utils", "_rebuild_tensor"),
             [lambda: torch03_pid(p, s, view), lambda: p.int_(offset),
              lambda: p.tuple_([(lambda v=v: p.int_(v)) for v in size]),
              lambda: p.tuple_([(lambda v=v: p.int_(v)) for v in stride])])


def tensor_v2(p, s, offset, size, stride):
    """torch 0.4-1.3 under Python 2: `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    backward_hooks)`, the hooks an empty OrderedDict in Python 2's REDUCE form (`OrderedDict([])`)."""
    p.reduce(lambda: p.global_("torch._utils", "_rebuild_tensor_v2"),
             [lambda: torch03_pid(p, s), lambda: p.int_(offset),
              lambda: p.tuple_([(lambda v=v: p.int_(v)) for v in size]),
              lambda: p.tuple_([(lambda v=v: p.int_(v)) for v in stride]),
              lambda: p.bool_(False), lambda: p.ordered_dict([])])


def contiguous_stride(size):
    stride, step = [], 1
    for n in reversed(size):
        stride.insert(0, step)
        step *= max(n, 1)
    return stride


def small_pickle(write):
    p = Py2Pickler()
    p.proto()
    write(p)
    p.stop()
    return bytes(p.out)


def sys_info_pickle(p, protocol_version):
    """`sys_info = dict(protocol_version=..., little_endian=True, type_sizes=dict(short=2, int=4, long=8))`."""
    p.dict_([(lambda: p.str_("protocol_version"), lambda: p.int_(protocol_version)),
             (lambda: p.str_("little_endian"), lambda: p.bool_(True)),
             (lambda: p.str_("type_sizes"), lambda: p.dict_([
                 (lambda: p.str_("short"), lambda: p.int_(2)),
                 (lambda: p.str_("int"), lambda: p.int_(4)),
                 (lambda: p.str_("long"), lambda: p.int_(8))]))])


def legacy_file(write_main, storages):
    """torch 0.3/0.4 `_save`: magic, protocol, sys_info, main pickle, sorted root keys, raw storages."""
    out = bytearray()
    out += small_pickle(lambda p: p.long_(MAGIC_NUMBER))
    out += small_pickle(lambda p: p.int_(PROTOCOL_VERSION))
    out += small_pickle(lambda p: sys_info_pickle(p, PROTOCOL_VERSION))
    out += small_pickle(write_main)
    keys = sorted(s.key for s in storages)
    out += small_pickle(lambda p: p.list_([(lambda k=k: p.str_(k)) for k in keys]))
    by_key = {s.key: s for s in storages}
    for k in keys:
        out += by_key[k].raw()
    return bytes(out)


def values(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def metadata(p, modules):
    """torch's state_dict `_metadata`: OrderedDict(prefix -> dict(version=N)), as Python 2 pickles it."""
    return [(lambda: p.str_("_metadata"),
             lambda: p.ordered_dict([((lambda m=m: p.str_(m)),
                                      (lambda v=v: p.dict_([(lambda: p.str_("version"), lambda v=v: p.int_(v))])))
                                     for m, v in modules]))]


# A long key is a BINSTRING (Python 2 uses it from 256 bytes on).
LONG_KEY = "encoder." + ".".join(["block%02d" % i for i in range(36)]) + ".weight"
assert len(LONG_KEY) >= 256


def py2_state_dict(conv_w, conv_b, fc_w, fc_b, bn_mean, tail_shape):
    """A Python 2 / torch 0.3 state dict: OrderedDict in REDUCE form with `_metadata`, `_rebuild_tensor` v1,
    SHORT_BINSTRING keys and one BINSTRING key, a storage on cuda:0, two tensors sharing one storage, an int64
    buffer. Returns (main pickle writer, storages)."""
    s_conv = Storage(94011236610000, conv_w, "cuda:0")
    s_convb = Storage(94011236610100, conv_b)
    # fc weight and bias share one storage: bias is its tail (a view at an offset), as tied/sliced tensors are.
    s_fc = Storage(94011236610200, torch.cat([fc_w.reshape(-1), fc_b]))
    s_bn = Storage(94011236610300, bn_mean)
    s_nb = Storage(94011236610400, torch.tensor([7], dtype=torch.int64))
    s_tail = Storage(94011236610500, values(tail_shape, 9))
    storages = [s_conv, s_convb, s_fc, s_bn, s_nb, s_tail]

    def main(p):
        entries = [
            ("conv1.weight", lambda: tensor_v1(p, s_conv, 0, list(conv_w.shape), contiguous_stride(conv_w.shape))),
            ("conv1.bias", lambda: tensor_v1(p, s_convb, 0, list(conv_b.shape), [1])),
            ("bn1.running_mean", lambda: tensor_v1(p, s_bn, 0, list(bn_mean.shape), [1])),
            ("bn1.num_batches_tracked", lambda: tensor_v1(p, s_nb, 0, [1], [1])),
            ("fc.weight", lambda: tensor_v1(p, s_fc, 0, list(fc_w.shape), contiguous_stride(fc_w.shape))),
            ("fc.bias", lambda: tensor_v1(p, s_fc, fc_w.numel(), list(fc_b.shape), [1])),
            (LONG_KEY, lambda: tensor_v1(p, s_tail, 0, list(tail_shape), contiguous_stride(tail_shape))),
        ]
        p.ordered_dict([((lambda k=k: p.str_(k)), v) for k, v in entries],
                       inst_dict=metadata(p, [("", 1), ("conv1", 1), ("bn1", 2), ("fc", 1)]))
    return main, storages


def write(name, data):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def fixed_tar(members):
    """torch 0.1.x `_save`: a PAX tar of the members, in its order; mtimes fixed so the bytes are deterministic
    (torch added temp files, whose float mtimes Python's tarfile writes as PAX `mtime` records: kept here)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1490000000.5  # a float, as os.stat gives: tarfile writes a PAX header for it
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def torch01_tar():
    """A torch 0.1.x checkpoint: OrderedDict state dict (Python 2 REDUCE form) whose tensors are persistent ids of
    the `tensors` member; one on cuda:0; one on a storage view; a storage pickled directly is left out (0.1.x
    state dicts hold tensors only)."""
    w = values((4, 3), 21)
    b = values((4,), 22)
    emb = values((5, 2), 23, torch.float64)
    idx = torch.arange(6, dtype=torch.int64)
    # storages: key (cdata, an int), location, type, data
    st = [(140000000000001, "cpu", "FloatStorage", torch.cat([w.reshape(-1), b])),
          (140000000000002, "cuda:0", "DoubleStorage", emb.reshape(-1)),
          (140000000000003, "cpu", "LongStorage", idx)]
    # a storage view: key 140000000000004 = elements 2..5 of the Long storage
    views = [(140000000000004, 140000000000003, 2, 4)]
    # tensors: key, storage key, tensor type, size, stride, offset
    ts = [(140000000000101, 140000000000001, "FloatTensor", [4, 3], [3, 1], 0),
          (140000000000102, 140000000000001, "FloatTensor", [4], [1], 12),
          (140000000000103, 140000000000002, "DoubleTensor", [2, 5], [1, 2], 0),  # a transposed view
          (140000000000104, 140000000000004, "LongTensor", [2, 2], [2, 1], 0)]
    names = ["fc.weight", "fc.bias", "emb.weight_t", "table"]

    def pickle_member(p):
        p.ordered_dict([((lambda n=n: p.str_(n)), (lambda k=t[0]: p.persistent(lambda: p.str_(str(k)))))
                        for n, t in zip(names, ts)])

    tensors = bytearray(small_pickle(lambda p: p.int_(len(ts))))
    for key, skey, ttype, size, stride, offset in ts:
        tensors += small_pickle(lambda p: p.tuple_([lambda: p.int_(key), lambda: p.int_(skey),
                                                    lambda: p.global_("torch", ttype)]))
        tensors += struct.pack("<q", len(size)) + struct.pack(f"<{len(size)}q", *size)
        tensors += struct.pack(f"<{len(stride)}q", *stride) + struct.pack("<q", offset)
    storages = bytearray(small_pickle(lambda p: p.int_(len(st))))
    for key, loc, stype, data in st:
        storages += small_pickle(lambda p: p.tuple_([lambda: p.int_(key), lambda: p.str_(loc),
                                                     lambda: p.global_("torch", stype)]))
        storages += struct.pack("<q", data.numel()) + data.numpy().tobytes()
    storages += small_pickle(lambda p: p.list_([
        (lambda v=v: p.tuple_([(lambda x=x: p.int_(x)) for x in v])) for v in views]))
    return fixed_tar([("sys_info", small_pickle(lambda p: sys_info_pickle(p, 1000))),
                      ("pickle", small_pickle(pickle_member)),
                      ("tensors", bytes(tensors)),
                      ("storages", bytes(storages))])


def dict_of_tuples():
    """A training checkpoint `{'epoch': 3, 'arch': 'tiny', 'model': dict([(k, v), ...])}`: the model a
    `__builtin__.dict` called with a list of (key, value) tuples (Python 2's pickle writes `__builtin__`; Python
    3's unpickler maps it to builtins), keys and values as Python 2 str."""
    s_w = Storage(94000000000001, values((3, 2), 31))
    s_b = Storage(94000000000002, values((3,), 32), "cuda:1")

    def main(p):
        model = [("linear.weight", lambda: tensor_v1(p, s_w, 0, [3, 2], [2, 1])),
                 ("linear.bias", lambda: tensor_v2(p, s_b, 0, [3], [1]))]
        pairs = [(lambda k=k, v=v: p.tuple_([lambda: p.str_(k), v])) for k, v in model]
        model_dict = lambda: p.reduce(lambda: p.global_("__builtin__", "dict"), [lambda: p.list_(pairs)])
        p.dict_([(lambda: p.str_("epoch"), lambda: p.int_(3)),
                 (lambda: p.str_("arch"), lambda: p.str_("tiny")),
                 (lambda: p.str_("model"), model_dict)])
    return legacy_file(main, [s_w, s_b])


def not_utf8():
    """A key that is a Python 2 str of Latin-1 bytes ("caf\\xe9.weight"): torch.load decodes str as UTF-8 and
    fails on it."""
    s = Storage(94000000000010, values((2,), 41))

    def main(p):
        p.ordered_dict([(lambda: p.str_(b"caf\xe9.weight"), lambda: tensor_v1(p, s, 0, [2], [1]))])
    return legacy_file(main, [s])


def storage_view():
    """A torch 0.3 storage view: a tensor whose storage is elements 4..9 of a root storage (the sixth field of
    the persistent id is (view key, offset, size))."""
    root = Storage(94000000000020, values((12,), 51))

    def main(p):
        p.ordered_dict([
            (lambda: p.str_("whole"), lambda: tensor_v1(p, root, 0, [12], [1])),
            (lambda: p.str_("part"), lambda: tensor_v1(p, root, 1, [2, 2], [2, 1], view=("94000000000099", 4, 6))),
        ])
    return legacy_file(main, [root])


def load(path):
    return torch.load(path, weights_only=False, map_location="cpu")


def main():
    conv_w, conv_b, fc_w, fc_b, bn = values((4, 3, 3, 3), 1), values((4,), 2), values((10, 4), 3), values((10,), 4), values((4,), 5)
    m, st = py2_state_dict(conv_w, conv_b, fc_w, fc_b, bn, (3, 4))
    write("py2-torch03-sd.pth", legacy_file(m, st))
    # The diff pair (A is py2-torch03-sd.pth): B differs in fc.weight's values and in the long-key tensor's shape.
    fc_w2 = fc_w.clone()
    fc_w2[3, 1] += 1.0
    m, st = py2_state_dict(conv_w, conv_b, fc_w2, fc_b, bn, (4, 4))
    write("py2-diff-b.pth", legacy_file(m, st))
    write("py2-dict-tuples.pth", dict_of_tuples())
    write("py2-storage-view.pth", storage_view())
    write("torch01-tar.pt", torch01_tar())
    write("py2-not-utf8.pth", not_utf8())

    facts = {}
    for name in sorted(os.listdir(OUT)):
        if not name.endswith((".pth", ".pt")):
            continue
        path = os.path.join(OUT, name)
        try:
            obj = load(path)
            facts[name] = {"loads": True, "type": type(obj).__name__}
        except Exception as e:  # noqa: BLE001 - the verdict is the fact
            facts[name] = {"loads": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        print(f"{name}: {os.path.getsize(path)} bytes, {facts[name]}")
    expected_failures = {"py2-not-utf8.pth"}
    for name, f in facts.items():
        if f["loads"] == (name in expected_failures):
            sys.exit(f"{name}: torch.load verdict {f} is not what this fixture is for")
    with open(os.path.join(OUT, "facts.json"), "w") as f:
        json.dump(facts, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
