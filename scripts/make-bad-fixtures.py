#!/usr/bin/env python3
"""Write the hostile fixtures: fixtures/malicious/ (code hidden beside a normal state dict) and
fixtures/bad/ (one defect each, the file named after it). See fixtures/README.md.

    .venv/bin/python scripts/make-bad-fixtures.py

Nothing here is ever unpickled with a real Unpickler. The generator checks what it wrote against the
references instead:
  - malicious: a recording Unpickler (every global is a stub that records its call; persistent ids are None)
    proves that loading would call the payload; torch.load(weights_only=True) (which never runs what it
    does not allow) and picklescan give their verdicts. These go to NAME.facts.json.
  - bad: torch.load(weights_only=True) must refuse each file, except the ones listed in TORCH_LOADS, which
    torch loads but ckpt refuses on purpose (README says why). The verdict goes to fixtures/bad/facts.json.
Deterministic: rerunning writes the same bytes.
"""

import collections
import io
import json
import os
import pickle
import random
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MAL = os.path.join(ROOT, "fixtures", "malicious")
BAD = os.path.join(ROOT, "fixtures", "bad")

torch.manual_seed(0)
torch.set_num_threads(1)


# ---- pickle bytes by hand (protocol 2 unless an opcode says otherwise) ----------------------------------


def s(text):
    """BINUNICODE."""
    b = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call(callable_bytes, *args):
    """callable(*args) with REDUCE; args are pickle fragments that each push one value."""
    return callable_bytes + b"(" + b"".join(args) + b"tR"


def body_of(pkl):
    """The opcodes of a protocol-2 pickle between PROTO and STOP: they push exactly one value."""
    assert pkl[:2] == b"\x80\x02" and pkl[-1:] == b".", pkl[:4]
    return pkl[2:-1]


def top_dict(*pairs):
    """A dict pickle: {key: value, ...}; values are fragments."""
    return b"\x80\x02}(" + b"".join(s(k) + v for k, v in pairs) + b"u."


# ---- torch containers ----------------------------------------------------------------------------------


def small_state_dict():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    return m.state_dict()


def torch_records(obj):
    """data.pkl bytes and the storage records torch.save writes for obj."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        root = z.namelist()[0].split("/")[0]
        records = {n[len(root) + 1:]: z.read(n) for n in z.namelist()}
    return records["data.pkl"], {k[5:]: v for k, v in records.items() if k.startswith("data/")}


def write_torch_zip(path, pkl, storages):
    """A zip in torch.save's exact layout (torch's own writer), with `pkl` as data.pkl."""
    if os.path.exists(path):
        os.remove(path)
    w = torch._C.PyTorchFileWriter(path, True, 64)
    w.write_record("data.pkl", pkl, len(pkl))
    w.write_record(".format_version", "1", 1)
    w.write_record(".storage_alignment", "64", 2)
    w.write_record("byteorder", "little", 6)
    for key in sorted(storages, key=int):
        data = storages[key]
        w.write_record(f"data/{key}", data, len(data))
    w.write_end_of_file()
    del w


def write_plain_zip(path, root, records, compress=()):
    """A zip written by Python's zipfile (for layouts torch's writer cannot make); fixed timestamps."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in records:
            # "=name" is written as given (names outside the root folder)
            info = zipfile.ZipInfo(name[1:] if name.startswith("=") else f"{root}/{name}", (2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            z.writestr(info, data)


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


# ---- malicious: code hidden beside a normal state dict ---------------------------------------------------

ECHO = "echo ckpt-test-payload"

PAYLOADS = {
    # name: (payload fragment pushing one value, what the recording unpickler must see called)
    "os-system": (call(glob("os", "system"), s(ECHO)), "os.system"),
    "posix-system": (call(glob("posix", "system"), s(ECHO)), "posix.system"),
    "builtins-exec": (call(glob("builtins", "exec"), s(f"__import__('os').system('{ECHO}')")), "builtins.exec"),
    "builtins-eval": (call(glob("__builtin__", "eval"), s(f"__import__('os').system('{ECHO}')")), "__builtin__.eval"),
    "subprocess-popen": (call(glob("subprocess", "Popen"), b"(" + s("echo") + s("ckpt-test-payload") + b"l"),
                         "subprocess.Popen"),
    "runpy-run-code": (call(glob("runpy", "_run_code"), s(f"import os; os.system('{ECHO}')"), b"}"), "runpy._run_code"),
    # getattr(__import__('os'), 'system')('echo ...')
    "getattr-chain": (call(call(glob("builtins", "getattr"), call(glob("builtins", "__import__"), s("os")), s("system")),
                           s(ECHO)), "builtins.getattr"),
    # STACK_GLOBAL whose module name is computed at load time: codecs.decode('bf', 'rot13') == 'os'.
    "stack-global-computed": (call(call(glob("codecs", "decode"), s("bf"), s("rot13")) + s("system") + b"\x93", s(ECHO)),
                              "os.system"),
    # STACK_GLOBAL with plain strings that come back from the memo.
    "stack-global-memo": (s("os") + b"r\x00\x00\x01\x00" + b"0" + s("system") + b"r\x01\x00\x01\x00" + b"0"
                          + call(b"j\x00\x00\x01\x00" + b"j\x01\x00\x01\x00" + b"\x93", s(ECHO)), "os.system"),
}


class Recorder(pickle.Unpickler):
    """Unpickles without running anything: every global is a stub that records its calls; `codecs.decode`
    (pure) is real so that the computed STACK_GLOBAL can be followed."""

    def __init__(self, f):
        super().__init__(f)
        self.called = []

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full == "codecs.decode":
            import codecs
            return codecs.decode
        recorder = self

        class Stub:
            def __new__(cls, *args, **kwargs):
                recorder.called.append(full)
                return object.__new__(cls)

            def __init__(self, *args, **kwargs):
                pass

            def __call__(self, *args, **kwargs):
                recorder.called.append(f"{full}(...)(...)")
                return Stub()

            def __setstate__(self, state):
                pass

            def __setitem__(self, k, v):
                pass

        return Stub

    def persistent_load(self, pid):
        return None


def picklescan_verdict(path):
    from picklescan.scanner import scan_file_path
    r = scan_file_path(path)
    return {"dangerous": r.issues_count > 0, "scan_error": r.scan_err,
            "globals": sorted(f"{g.module}.{g.name}" for g in r.globals if g.safety.value == "dangerous")}


def weights_only_loads(path):
    try:
        torch.load(path, weights_only=True, map_location="cpu")
        return True
    except Exception:
        return False


def make_malicious():
    os.makedirs(MAL, exist_ok=True)
    sd_pkl, storages = torch_records(small_state_dict())
    body = body_of(sd_pkl)
    for name, (payload, expected) in PAYLOADS.items():
        pkl = top_dict(("state_dict", body), ("config", payload))
        rec = Recorder(io.BytesIO(pkl))
        rec.load()
        assert expected in rec.called, (name, rec.called)
        path = os.path.join(MAL, f"{name}.pt")
        write_torch_zip(path, pkl, storages)
        facts = {"file": f"{name}.pt", "payload_calls": expected, "weights_only_loads": weights_only_loads(path),
                 "picklescan": picklescan_verdict(path)}
        with open(os.path.join(MAL, f"{name}.facts.json"), "w") as f:
            f.write(json.dumps(facts, indent=1) + "\n")

    # Legacy format: the payload hides in sys_info, the third of the five pickles torch.load unpickles.
    # (built from the committed legacy fixture: a fresh legacy save has memory addresses for keys)
    data = open(os.path.join(ROOT, "fixtures", "sd-legacy.pt"), "rb").read()
    # Find the pickle boundaries with pickletools (which only reads opcodes).
    import pickletools
    ends, f = [], io.BytesIO(data)
    for _ in range(3):
        for op, _arg, _pos in pickletools.genops(f):
            if op.name == "STOP":
                ends.append(f.tell())
                break
    sys_info = b"\x80\x02}(" + s("protocol_version") + b"M\xe9\x03" + s("config") + PAYLOADS["os-system"][0] + b"u."
    rec = Recorder(io.BytesIO(sys_info))
    rec.load()
    assert "os.system" in rec.called, rec.called
    evil = data[:ends[1]] + sys_info + data[ends[2]:]
    path = os.path.join(MAL, "legacy-sys-info-os-system.pt")
    with open(path, "wb") as out:
        out.write(evil)
    facts = {"file": "legacy-sys-info-os-system.pt", "payload_calls": "os.system",
             "weights_only_loads": weights_only_loads(path), "picklescan": picklescan_verdict(path)}
    with open(os.path.join(MAL, "legacy-sys-info-os-system.facts.json"), "w") as f:
        f.write(json.dumps(facts, indent=1) + "\n")


# ---- bad: one defect per file ----------------------------------------------------------------------------


class Storage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def tensor_file(path, tensors, storages):
    """A state dict of hand-made tensor references: tensors = {name: Tensor}, storages = {key: bytes}."""
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    write_torch_zip(path, buf.getvalue(), storages)


class FakeStorage:
    pass


def make_bad():
    if os.path.isdir(BAD):
        shutil.rmtree(BAD)
    os.makedirs(BAD)
    sd_pkl, storages = torch_records(small_state_dict())
    good = os.path.join(BAD, "_good.pt")
    write_torch_zip(good, sd_pkl, storages)
    raw = open(good, "rb").read()
    with zipfile.ZipFile(good) as z:
        infos = {i.filename: i for i in z.infolist()}
        records = [(i.filename.split("/", 1)[1], z.read(i.filename)) for i in z.infolist()]

    def put(name, data):
        with open(os.path.join(BAD, name), "wb") as f:
            f.write(data)

    def data_offset(info):
        n, e = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        return info.header_offset + 30 + n + e

    # Container
    put("empty-file.pt", b"")
    put("not-a-checkpoint.pt", b"this is a text file, not a checkpoint\n" * 4)
    eocd = raw.rfind(b"PK\x05\x06")
    cd = struct.unpack("<I", raw[eocd + 16:eocd + 20])[0]
    put("truncated-central-directory.pt", raw[:cd + 60])
    put("truncated-storage.pt", raw[:data_offset(infos["_good/data/0"]) + 10])
    b = bytearray(raw)
    b[data_offset(infos["_good/data.pkl"]) + 40] ^= 0x01
    put("crc-mismatch-data-pkl.pt", bytes(b))
    b = bytearray(raw)
    b[data_offset(infos["_good/data/0"]) + 5] ^= 0x80
    put("crc-mismatch-storage.pt", bytes(b))
    b = bytearray(raw)
    b[cd + 46] ^= 0x20  # first letter of the first central directory name
    put("central-directory-disagrees-with-local-header.pt", bytes(b))
    root = "pt"
    write_plain_zip(os.path.join(BAD, "missing-data-pkl.pt"), root, [r for r in records if r[0] != "data.pkl"])
    write_plain_zip(os.path.join(BAD, "missing-storage-record.pt"), root, [r for r in records if r[0] != "data/3"])
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "x.zip")
        write_plain_zip(p, root, records + [("data/3", b"\0" * 16)])
        shutil.copy(p, os.path.join(BAD, "duplicate-record.pt"))
    write_plain_zip(os.path.join(BAD, "path-traversal-record-name.pt"), root, records + [(f"={root}/../../x", b"x")])
    write_plain_zip(os.path.join(BAD, "absolute-record-name.pt"), root, records + [("=/tmp/x", b"x")])

    def patch_sizes(path, record, size):
        """Declares `size` bytes for `record` in its local header and central directory entry."""
        d = bytearray(open(path, "rb").read())
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{root}/{record}")
        struct.pack_into("<I", d, info.header_offset + 22, size)
        name = info.filename.encode()
        at = d.find(b"PK\x01\x02", 0)
        while at >= 0:
            n = struct.unpack("<H", d[at + 28:at + 30])[0]
            if bytes(d[at + 46:at + 46 + n]) == name:
                struct.pack_into("<I", d, at + 24, size)
                break
            at = d.find(b"PK\x01\x02", at + 1)
        open(path, "wb").write(bytes(d))

    p = os.path.join(BAD, "deflated-declared-size-over-limit.pt")
    write_plain_zip(p, root, records, compress={"data.pkl"})
    patch_sizes(p, "data.pkl", 0xF000_0000)
    p = os.path.join(BAD, "deflated-declared-size-larger-than-real.pt")
    write_plain_zip(p, root, records, compress={"data.pkl"})
    patch_sizes(p, "data.pkl", 1 << 30)
    bomb = [(n, d + b"\0" * (16 << 20) if n == "data.pkl" else d) for n, d in records]
    p = os.path.join(BAD, "deflated-real-size-larger-than-declared.pt")
    write_plain_zip(p, root, bomb, compress={"data.pkl"})
    patch_sizes(p, "data.pkl", len(sd_pkl))

    # Deflated storages. keys and info read no storage bytes, so a deflated storage that lies about its size or
    # CRC used to be listed as the tensor it claims to be. deflate emits at most 1032 bytes per compressed byte
    # (zlib's technical details: a 258-byte match costs at least 2 bits), so 3 GiB cannot come from 2.6 kB.
    def patch_crc(path, record):
        """Flips the low bit of `record`'s CRC-32 in its local header and central directory entry."""
        d = bytearray(open(path, "rb").read())
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{root}/{record}")
        d[info.header_offset + 14] ^= 0x01
        name = info.filename.encode()
        at = d.find(b"PK\x01\x02", 0)
        while at >= 0:
            n = struct.unpack("<H", d[at + 28:at + 30])[0]
            if bytes(d[at + 46:at + 46 + n]) == name:
                d[at + 16] ^= 0x01
                break
            at = d.find(b"PK\x01\x02", at + 1)
        open(path, "wb").write(bytes(d))

    huge = 3 << 30
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(
        collections.OrderedDict(w=Tensor(Storage(torch.FloatStorage, "0", huge // 4), 0, [huge // 4], [1])))
    noise = random.Random(11).randbytes(2600)  # incompressible, deterministic
    p = os.path.join(BAD, "deflate-ratio-over-1032.pt")
    write_plain_zip(p, root, [("data.pkl", buf.getvalue()), ("byteorder", b"little"), ("data/0", noise)],
                    compress={"data/0"})
    patch_sizes(p, "data/0", huge)
    conv = dict(records)["data/0"]  # the conv weight, 432 bytes: the pickle declares 108 floats
    p = os.path.join(BAD, "deflated-storage-inflates-short.pt")
    write_plain_zip(p, root, [(n, d[:200] if n == "data/0" else d) for n, d in records], compress={"data/0"})
    patch_sizes(p, "data/0", len(conv))
    p = os.path.join(BAD, "deflated-storage-inflates-long.pt")
    write_plain_zip(p, root, [(n, d + d[:200] if n == "data/0" else d) for n, d in records], compress={"data/0"})
    patch_sizes(p, "data/0", len(conv))
    p = os.path.join(BAD, "deflated-storage-crc-mismatch.pt")
    write_plain_zip(p, root, records, compress={"data/0"})
    patch_crc(p, "data/0")

    # Pickle
    def with_pickle(name, pkl):
        write_torch_zip(os.path.join(BAD, name), pkl, storages)

    with_pickle("unknown-opcode.pt", sd_pkl[:-1] + b"\xff.")
    with_pickle("pickle-without-stop.pt", sd_pkl[:-1])
    with_pickle("stack-underflow.pt", b"\x80\x02R.")
    with_pickle("memo-get-missing.pt", b"\x80\x02h\x07.")
    def deflated_pickle(name, pkl):  # repetitive pickles, deflated to stay small
        write_plain_zip(os.path.join(BAD, name), root, [(n, pkl if n == "data.pkl" else d) for n, d in records],
                        compress={"data.pkl"})

    deep = 100_000
    deflated_pickle("nesting-100000-deep.pt", b"\x80\x02" + b"]" * deep + b"a" * (deep - 1) + b".")
    # memo abuse: each tuple holds its predecessor twice, 64 times over: 2**64 paths through 65 objects
    # (opcodes weights_only accepts, so torch loads it: Python shares the objects and never walks the paths)
    bomb = b"\x80\x02]r\x00\x00\x00\x00"
    for i in range(1, 65):
        bomb += b"j" + struct.pack("<I", i - 1) + b"\x86r" + struct.pack("<I", i)
    with_pickle("memo-bomb.pt", top_dict(("state_dict", body_of(sd_pkl)), ("bomb", body_of(bomb + b"."))))
    deflated_pickle("marks-100000-open.pt", b"\x80\x02" + b"(" * 100_000 + b"N.")
    with_pickle("persistent-id-not-a-storage.pt", b"\x80\x02" + s("not a storage") + b"Q.")

    # Tensors
    f32 = torch.FloatStorage
    four = {"0": b"\0" * 16}
    tensor_file(os.path.join(BAD, "negative-stride.pt"), {"w": Tensor(Storage(f32, "0", 4), 3, [4], [-1])}, four)
    tensor_file(os.path.join(BAD, "negative-storage-offset.pt"), {"w": Tensor(Storage(f32, "0", 4), -1, [2], [1])}, four)
    tensor_file(os.path.join(BAD, "shape-numel-overflow.pt"),
                {"w": Tensor(Storage(f32, "0", 4), 0, [1 << 40, 1 << 40], [1 << 40, 1])}, four)
    tensor_file(os.path.join(BAD, "tensor-past-storage.pt"), {"w": Tensor(Storage(f32, "0", 4), 0, [2, 3], [3, 1])}, four)
    tensor_file(os.path.join(BAD, "stride-count-differs-from-shape.pt"),
                {"w": Tensor(Storage(f32, "0", 4), 0, [2, 2], [1])}, four)
    tensor_file(os.path.join(BAD, "storage-record-shorter-than-declared.pt"),
                {"w": Tensor(Storage(f32, "0", 8), 0, [8], [1])}, four)
    FakeStorage.__module__, FakeStorage.__qualname__, FakeStorage.__name__ = "torch", "Float7Storage", "Float7Storage"
    torch.Float7Storage = FakeStorage
    try:
        tensor_file(os.path.join(BAD, "storage-type-does-not-exist.pt"),
                    {"w": Tensor(Storage(FakeStorage, "0", 4), 0, [4], [1])}, four)
    finally:
        del torch.Float7Storage

    # Legacy
    put("legacy-truncated-storage.pt", open(os.path.join(ROOT, "fixtures", "sd-legacy.pt"), "rb").read()[:-7])

    os.remove(good)
    facts = {}
    for name in sorted(os.listdir(BAD)):
        if name.endswith(".pt"):
            facts[name] = {"torch_loads": weights_only_loads(os.path.join(BAD, name)), "bytes": os.path.getsize(os.path.join(BAD, name))}
    for name, f in facts.items():
        if f["torch_loads"] and name not in TORCH_LOADS:
            sys.exit(f"torch.load accepts {name}, which is meant to be a defect it refuses")
        if not f["torch_loads"] and name in TORCH_LOADS:
            sys.exit(f"torch.load refuses {name}, listed in TORCH_LOADS")
    with open(os.path.join(BAD, "facts.json"), "w") as f:
        f.write(json.dumps(facts, indent=1, sort_keys=True) + "\n")


# Files torch.load(weights_only=True) accepts that ckpt refuses on purpose (fixtures/README.md says why).
TORCH_LOADS = {
    "crc-mismatch-data-pkl.pt",  # torch does not check CRC-32s; ckpt does
    "crc-mismatch-storage.pt",
    "deflated-real-size-larger-than-declared.pt",  # torch stops at the declared size; ckpt refuses the lie
    "deflated-storage-crc-mismatch.pt",  # torch builds miniz without CRC checks; ckpt checks every CRC
    "deflated-storage-inflates-long.pt",  # torch stops at the declared size; ckpt refuses the lie
    "duplicate-record.pt",  # torch takes one of the two; which one is undefined
    "path-traversal-record-name.pt",  # torch never extracts, so ignores it; ckpt refuses unsafe names outright
    "nesting-100000-deep.pt",  # Python unpickles deep nesting; ckpt caps nesting at 1000 levels
    "marks-100000-open.pt",  # and open MARKs at 10000
    "memo-bomb.pt",  # Python shares the objects; naming what is inside would take 2**64 steps
}

if __name__ == "__main__":
    make_malicious()
    make_bad()
    print(f"wrote {MAL} and {BAD}")
