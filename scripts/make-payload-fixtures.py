#!/usr/bin/env python3
"""Write fixtures/payloads/: one checkpoint per kind of payload a block list misses (issue 12), and
fixtures/payloads/weights-only/: one small file per weights_only=True corner case of torch's replayed unpickler.

    .venv/bin/python scripts/make-payload-fixtures.py

Each payload file is a torch zip (torch's own writer) whose data.pkl is {'state_dict': a normal state dict,
'config': PAYLOAD}, PAYLOAD built opcode by opcode below. Every payload does one thing only: it creates the file
`ckpt-payload-marker` in the current folder (the tests run torch.load(weights_only=False) in a throwaway
subprocess whose working folder is a fresh temp folder, and look for the marker there).

Nothing here is unpickled with a real Unpickler. The recording Unpickler of scripts/make-bad-fixtures.py (every
global a stub that records its calls) proves what loading would call; picklescan and torch.load(weights_only=True)
(which never runs what it does not allow) give their verdicts. These go to NAME.facts.json, with the callable
checked to exist in the installed torch / packages (imported, never called) and the package it needs.
Deterministic: rerunning writes the same bytes.
"""

import importlib
import importlib.util
import io
import json
import os
import struct
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "fixtures", "payloads")
WO = os.path.join(OUT, "weights-only")

_spec = importlib.util.spec_from_file_location("make_bad_fixtures", os.path.join(HERE, "make-bad-fixtures.py"))
bad = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad)  # defines helpers only (its main is guarded)

import torch  # noqa: E402

s, glob, call, body_of = bad.s, bad.glob, bad.call, bad.body_of
MARKER = "ckpt-payload-marker"
NONE = b"N"
EMPTY_DICT = b"}"
EMPTY_TUPLE = b")"


def stack_global(module, name):
    """Protocol 4 STACK_GLOBAL: two strings, then the opcode; `name` may be dotted (resolved attribute by
    attribute by pickle's find_class)."""
    return s(module) + s(name) + b"\x93"


def tup(*items):
    return b"(" + b"".join(items) + b"t"


def binbytes(data):
    """BINBYTES (protocol 3)."""
    return b"B" + struct.pack("<I", len(data)) + data


def binint(n):
    return b"J" + struct.pack("<i", n)


def dict_of(*pairs):
    return b"}(" + b"".join(s(k) + v for k, v in pairs) + b"u"


# The inner pickle some payloads unpickle from bytes: codecs.open('ckpt-payload-marker', 'w').
INNER = b"\x80\x02" + call(glob("codecs", "open"), s(MARKER), s("w")) + b"."
PY_MARKER = f"__import__('codecs').open('{MARKER}', 'w').close()"
POSIX_PATH = call(glob("pathlib", "PosixPath"), s(MARKER))
TEMPLATE = "{{ self.__init__.__globals__.__builtins__.open('" + MARKER + "', 'w').close() }}"


def tensor_of_bytes(key, data):
    """torch._utils._rebuild_tensor_v2 over a uint8 storage record `key` holding `data`, as torch.save writes it."""
    pid = tup(s("storage"), glob("torch", "ByteStorage"), s(key), s("cpu"), binint(len(data)))
    return call(glob("torch._utils", "_rebuild_tensor_v2"), pid + b"Q", binint(0), tup(binint(len(data))), tup(binint(1)),
                b"\x89", call(glob("collections", "OrderedDict")))


# name: (payload fragment, protocol, what the recorder sees called, callable to check (module, dotted attribute),
#        package it needs beyond torch, extra storage records)
PAYLOADS = {
    "fx-reduce-graph-module": (
        call(glob("torch.fx.graph_module", "reduce_graph_module"), dict_of(("_code", s("\ndef forward(self):\n    pass\n"))),
             s(PY_MARKER + "\n")),
        2, "torch.fx.graph_module.reduce_graph_module", ("torch.fx.graph_module", "reduce_graph_module"), None, {}),
    "typing-eval-type-forwardref": (
        call(glob("typing", "_eval_type"), call(glob("typing", "ForwardRef"), s(PY_MARKER + " or int")), NONE, NONE),
        2, "typing._eval_type", ("typing", "_eval_type"), None, {}),
    "sympy-eval-expr": (
        call(glob("sympy.parsing.sympy_parser", "eval_expr"), s(PY_MARKER), EMPTY_DICT, EMPTY_DICT),
        2, "sympy.parsing.sympy_parser.eval_expr", ("sympy.parsing.sympy_parser", "eval_expr"), "sympy (a torch dependency)", {}),
    "inductor-config-load-config": (
        call(glob("torch._inductor.config", "load_config"), binbytes(INNER)),
        2, "torch._inductor.config.load_config", ("torch._inductor.config", "load_config"), None, {}),
    "inductor-run-compile-cmd": (
        call(glob("torch._inductor.cpp_builder", "run_compile_cmd"), s(f"touch {MARKER}"), s(".")),
        2, "torch._inductor.cpp_builder.run_compile_cmd", ("torch._inductor.cpp_builder", "run_compile_cmd"), None, {}),
    "elastic-subprocess-handler": (
        call(glob("torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler", "SubprocessHandler"),
             s("touch"), tup(s(MARKER)), EMPTY_DICT, NONE, NONE, binint(0), NONE),
        2, "torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler.SubprocessHandler",
        ("torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler", "SubprocessHandler"), None, {}),
    "pathlib-write-text": (
        call(stack_global("pathlib", "Path.write_text"), POSIX_PATH, s("x")),
        4, "pathlib.Path.write_text", ("pathlib", "Path.write_text"), None, {}),
    "jinja2-template-render": (
        call(call(glob("builtins", "getattr"), call(glob("jinja2", "Template"), s(TEMPLATE)), s("render"))),
        2, "jinja2.Template", ("jinja2", "Template.render"), "jinja2 (a torch dependency)", {}),
    "codecs-open": (
        call(glob("codecs", "open"), s(MARKER), s("w")),
        2, "codecs.open", ("codecs", "open"), None, {}),
    "import-dotted-name-then-call": (
        call(call(glob("torch._utils", "_import_dotted_name"), s("pathlib.Path.touch")), POSIX_PATH),
        2, "torch._utils._import_dotted_name", ("torch._utils", "_import_dotted_name"), None, {}),
    "tensor-to-object": (
        call(glob("torch.distributed.distributed_c10d", "_tensor_to_object"), tensor_of_bytes("9", INNER),
             binint(len(INNER)), NONE),
        2, "torch.distributed.distributed_c10d._tensor_to_object",
        ("torch.distributed.distributed_c10d", "_tensor_to_object"), None, {"9": INNER}),
    "numpy-dotted-runstring": (
        call(stack_global("numpy", "testing._private.utils.runstring"), s(PY_MARKER), EMPTY_DICT),
        4, "numpy.testing._private.utils.runstring", ("numpy", "testing._private.utils.runstring"), "numpy (not a torch dependency)", {}),
    # The same function spelled two ways (same `module.name` text): a harmless-looking reference first, then the
    # dotted protocol-4 spelling, called. A report that merges by name shows only the reference.
    "one-global-two-spellings": (
        dict_of(("loader", glob("torch._utils", "_import_dotted_name")),
                ("run", call(call(stack_global("torch", "_utils._import_dotted_name"), s("pathlib.Path.touch")),
                             POSIX_PATH))),
        4, "torch._utils._import_dotted_name", ("torch", "_utils._import_dotted_name"), None, {}),
}


def resolve(module, dotted):
    """Imports `module` and walks `dotted` with getattr, as pickle's find_class does; calls nothing."""
    obj = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def pickle_of(payload, proto, state_body):
    return bytes([0x80, proto]) + b"}(" + s("state_dict") + state_body + s("config") + payload + b"u."


def make_payloads():
    os.makedirs(OUT, exist_ok=True)
    sd_pkl, storages = bad.torch_records(bad.small_state_dict())
    body = body_of(sd_pkl)
    for name, (payload, proto, expected, (module, dotted), needs, extra) in PAYLOADS.items():
        assert callable(resolve(module, dotted)), (name, module, dotted)
        pkl = pickle_of(payload, proto, body)
        rec = bad.Recorder(io.BytesIO(pkl))
        rec.load()
        assert expected in rec.called, (name, rec.called)
        path = os.path.join(OUT, f"{name}.pt")
        bad.write_torch_zip(path, pkl, {**storages, **extra})
        facts = {"file": f"{name}.pt", "payload_calls": expected, "callable": f"{module} + {dotted}",
                 "needs_package": needs, "marker": MARKER, "weights_only_loads": bad.weights_only_loads(path),
                 "picklescan": bad.picklescan_verdict(path)}
        with open(os.path.join(OUT, f"{name}.facts.json"), "w") as f:
            f.write(json.dumps(facts, indent=1) + "\n")


# ---- weights_only=True corner cases (torch/_weights_only_unpickler.py) -----------------------------------------
# Each is a zip whose data.pkl is {'state_dict': the small state dict, 'x': CASE}; nothing in them runs code in any
# unpickler (only allow-listed globals or plain values). facts.json records torch.load(weights_only=True)'s verdict.

def rebuild_set(state):
    return call(glob("__builtin__", "set")) + state + b"b"


WO_CASES = {
    # BUILD on the result of a call torch allows but whose type is not allow-listed (bytes from _codecs.encode)
    "build-on-bytes": call(glob("_codecs", "encode"), s("abc"), s("latin1")) + EMPTY_DICT + b"b",
    # BUILD on a list (EMPTY_LIST): list is not an allowed type
    "build-on-list": b"]" + EMPTY_DICT + b"b",
    # NEWOBJ on torch.float32: allow-listed, but not a class (cls.__new__ fails)
    "newobj-on-dtype": glob("torch", "float32") + EMPTY_TUPLE + b"\x81",
    # NEWOBJ on an allowed class (collections.OrderedDict): loads
    "newobj-on-ordereddict": glob("collections", "OrderedDict") + EMPTY_TUPLE + b"\x81",
    # REDUCE of torch.float32: allow-listed, but not callable
    "reduce-of-dtype": call(glob("torch", "float32")),
    # a Python 2 str that is not UTF-8 (SHORT_BINSTRING): torch decodes it as UTF-8, strictly
    "short-binstring-not-utf8": b"U\x02\xff\xfe",
    # a SHORT_BINSTRING that is UTF-8: loads
    "short-binstring-utf8": b"U\x03abc",
    # set() then BUILD {}: the state is empty, `if state:` skips it; torch loads it
    "set-build-empty-dict": rebuild_set(EMPTY_DICT),
    # set() then BUILD {'a': 1}: set instances have no __dict__: refused
    "set-build-nonempty-dict": rebuild_set(dict_of(("a", binint(1)))),
}


def wo_storage_tag_by_codecs(body_pkl, storages):
    """The state dict with every persistent id's tag 'storage' written as _codecs.encode('storage', 'latin1'):
    torch decodes the bytes back to 'storage' (_maybe_decode_ascii) and loads the file."""
    tag = b"X\x07\x00\x00\x00storage"
    assert tag in body_pkl
    return body_pkl.replace(tag, call(glob("_codecs", "encode"), s("storage"), s("latin1")))


def write_wo_zip(path, pkl, storages):
    bad.write_torch_zip(path, pkl, storages)


def make_weights_only():
    os.makedirs(WO, exist_ok=True)
    sd_pkl, storages = bad.torch_records(bad.small_state_dict())
    body = body_of(sd_pkl)
    files = {}
    for name, frag in WO_CASES.items():
        pkl = b"\x80\x02}(" + s("state_dict") + body + s("x") + frag + b"u."
        files[name] = (pkl, storages)
    files["storage-tag-by-codecs-encode"] = (wo_storage_tag_by_codecs(sd_pkl, storages), storages)
    verdicts = {}
    for name, (pkl, st) in files.items():
        path = os.path.join(WO, f"{name}.pt")
        write_wo_zip(path, pkl, st)
        verdicts[f"{name}.pt"] = bad.weights_only_loads(path)
    # A zip with an empty constants.pkl beside a normal data.pkl: torch.load takes it for TorchScript and refuses
    # weights_only=True ("Cannot use weights_only=True with TorchScript archives").
    path = os.path.join(WO, "empty-constants-pkl.pt")
    sd_files = {}
    buf = io.BytesIO()
    torch.save(bad.small_state_dict(), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        for n in z.namelist():
            sd_files[n] = z.read(n)
    root = next(iter(sd_files)).split("/")[0]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in list(sd_files.items()) + [(f"{root}/constants.pkl", b"")]:
            z.writestr(zipfile.ZipInfo(n, (2024, 1, 1, 0, 0, 0)), data)
    verdicts["empty-constants-pkl.pt"] = bad.weights_only_loads(path)
    with open(os.path.join(WO, "facts.json"), "w") as f:
        f.write(json.dumps({"weights_only_loads": verdicts}, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    make_payloads()
    make_weights_only()
    print(f"wrote {OUT}")
