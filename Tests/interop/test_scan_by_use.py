"""ckpt scan's allow-list-by-use design (issue 12) against the references.

Payloads (fixtures/payloads, scripts/make-payload-fixtures.py): real torch.load(weights_only=False) runs each one in a
throwaway subprocess whose working folder is a fresh temp folder (the payload only creates `ckpt-payload-marker`
there), and ckpt scan exits 1, ckpt strip refuses and writes nothing. weights_only corner cases
(fixtures/payloads/weights-only): ckpt's prediction equals real torch.load(weights_only=True)."""
import json
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from picklescan.scanner import scan_file_path

from conftest import FIXTURES, run, weights_only_loads

PAYLOADS = sorted((FIXTURES / "payloads").glob("*.pt"))
WO_DIR = FIXTURES / "payloads" / "weights-only"
WO_FILES = sorted(WO_DIR.glob("*.pt"))
MARKER = "ckpt-payload-marker"


def scan(path, *extra):
    p = run("scan", path, "--json", *extra)
    assert p.returncode in (0, 1), f"ckpt scan {path} exited {p.returncode}: {p.stderr}"
    return p.returncode, json.loads(p.stdout)


def torch_load_runs_payload(path, tmp_path):
    """torch.load(weights_only=False) in a subprocess, in its own empty folder: whether the marker appears."""
    work = tmp_path / "sandbox"
    work.mkdir()
    code = "import sys, torch\ntry:\n    torch.load(sys.argv[1], weights_only=False)\nexcept BaseException:\n    pass\n"
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=work, capture_output=True, timeout=300)
    for _ in range(50):  # the elastic handler's Popen finishes on its own time
        if (work / MARKER).exists():
            break
        time.sleep(0.1)
    return (work / MARKER).exists()


def test_there_is_one_fixture_per_payload_kind():
    assert {p.stem for p in PAYLOADS} == {
        "fx-reduce-graph-module", "typing-eval-type-forwardref", "sympy-eval-expr", "inductor-config-load-config",
        "inductor-run-compile-cmd", "elastic-subprocess-handler", "pathlib-write-text", "jinja2-template-render",
        "codecs-open", "import-dotted-name-then-call", "tensor-to-object", "numpy-dotted-runstring",
        "one-global-two-spellings"}


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.stem)
def test_payload_runs_in_torch_and_is_flagged_and_refused(path, tmp_path):
    facts = json.loads(path.with_suffix(".facts.json").read_text())
    assert torch_load_runs_payload(path, tmp_path), "torch.load(weights_only=False) did not run the payload"
    code, report = scan(path)
    assert code == 1 and report["verdict"] == "dangerous", report["globals"]
    dangerous = [g for g in report["globals"] if g["class"] == "dangerous"]
    assert any(g["use"] == "called" for g in dangerous), dangerous
    assert facts["payload_calls"] in [g["name"] for g in dangerous], (facts["payload_calls"], dangerous)
    assert report["weights_only"]["loads"] is False and facts["weights_only_loads"] is False
    out = tmp_path / "out.pt"
    before = path.read_bytes()
    p = run("strip", path, out)
    assert p.returncode == 1, p.stderr
    assert "refusing to rewrite" in p.stderr and "--allow-unsafe" in p.stderr
    assert not out.exists() and [x.name for x in tmp_path.iterdir()] == ["sandbox"]
    assert path.read_bytes() == before


def test_one_global_two_spellings_are_two_rows():
    _, report = scan(FIXTURES / "payloads" / "one-global-two-spellings.pt")
    rows = {(g["module"], g["use"]): g for g in report["globals"] if g["name"] == "torch._utils._import_dotted_name"}
    assert rows[("torch._utils", "referenced")]["class"] == "safe" or rows[("torch._utils", "referenced")]["class"] == "needs-code"
    assert rows[("torch", "called")]["class"] == "dangerous"


def test_computed_callable_is_named():
    """_import_dotted_name's result, then called: the call of a computed callable is its own dangerous row."""
    _, report = scan(FIXTURES / "payloads" / "import-dotted-name-then-call.pt")
    computed = [g for g in report["globals"] if g["name"].startswith("<computed by REDUCE")]
    assert computed and computed[0]["class"] == "dangerous"
    assert "torch._utils._import_dotted_name" in computed[0]["reason"]


def test_the_tensor_to_object_payload_sits_in_a_storage_record():
    with zipfile.ZipFile(FIXTURES / "payloads" / "tensor-to-object.pt") as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        storage = next(n for n in z.namelist() if n.endswith("data/9"))
        assert b"codecs" not in z.read(pkl) and b"codecs" in z.read(storage)


def picklescan_flags(path):
    return scan_file_path(str(path)).issues_count > 0


def test_picklescan_misses_most_payload_kinds():
    """The reason for the design: the pinned picklescan's block list misses these (the README table)."""
    missed = [p.stem for p in PAYLOADS if not picklescan_flags(p)]
    assert len(missed) >= 8, missed
    for p in PAYLOADS:
        facts = json.loads(p.with_suffix(".facts.json").read_text())
        assert facts["picklescan"]["dangerous"] == picklescan_flags(p)


# ---- weights_only=True ------------------------------------------------------------------------------------



@pytest.mark.parametrize("path", WO_FILES, ids=lambda p: p.stem)
def test_weights_only_prediction_is_torchs(path):
    facts = json.loads((WO_DIR / "facts.json").read_text())["weights_only_loads"]
    truth = weights_only_loads(path)
    assert truth == facts[path.name]
    p = run("scan", path, "--json")
    assert p.returncode in (0, 2), p.stderr
    if p.returncode == 2:  # unreadable by ckpt: only acceptable where torch refuses too
        assert truth is False, p.stderr
        return
    report = json.loads(p.stdout)
    assert report["weights_only"]["loads"] == truth, report["weights_only"]


def test_weights_only_cases_cover_both_outcomes():
    facts = json.loads((WO_DIR / "facts.json").read_text())["weights_only_loads"]
    assert set(facts.values()) == {True, False}
    assert facts["set-build-empty-dict.pt"] is True and facts["set-build-nonempty-dict.pt"] is False
    assert facts["storage-tag-by-codecs-encode.pt"] is True and facts["newobj-on-dtype.pt"] is False


def test_empty_constants_pkl_is_torchscript_to_torch():
    path = WO_DIR / "empty-constants-pkl.pt"
    with pytest.raises(Exception, match="TorchScript"):
        torch.load(path, weights_only=True)
    p = run("scan", path, "--json")
    # ckpt cannot read it as TorchScript either (constants.pkl is empty): exit 2, with torch's verdict on the line
    assert p.returncode == 2 and p.stdout == ""
    assert "weights_only=True: refused" in p.stderr and "TorchScript archives" in p.stderr, p.stderr


@pytest.mark.parametrize("name", ["m.safetensors", "m-safetensors.pt", "m.onnx"])
def test_formats_torch_load_does_not_unpickle(name, tmp_path):
    """torch 2.13 hands a path ending in .safetensors to safetensors.torch.load_file; any other safetensors or ONNX
    file it unpickles and fails on. scan's prediction says which, and never 'loads' for the second kind."""
    src = FIXTURES / "sd-proto2.pt"
    out = tmp_path / name
    if "safetensors" in name:
        tmp = tmp_path / "tmp.safetensors"
        assert run("convert", src, tmp).returncode == 0
        tmp.rename(out)
    else:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
        w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
        g = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [w])
        onnx.save(helper.make_model(g), str(out))
    truth = weights_only_loads(out)
    assert truth is (name == "m.safetensors")
    code, report = scan(out)
    assert code == 0
    assert report["weights_only"]["loads"] is truth
    assert ("safetensors.torch.load_file" if truth else "cannot open") in report["weights_only"]["reason"]


# ---- use classes on real files ---------------------------------------------------------------------------------


def test_torchscript_builders_are_allowed(tmp_path):
    """A TorchScript archive with int lists (build_intlist) is no longer flagged. Scripted in a subprocess: scripting
    nn.Linear here would change how later tests' archives print it (torch caches compiled classes per process)."""
    path = tmp_path / "ts.pt"
    code = (
        "import sys, torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.sizes = [1, 2, 3]\n"
        "        self.lin = torch.nn.Linear(2, 2)\n"
        "    def forward(self, x):\n"
        "        return self.lin(x)\n"
        "torch.jit.save(torch.jit.script(M()), sys.argv[1])\n")
    script = tmp_path / "make_ts.py"  # torch.jit.script reads the class's source from its file
    script.write_text(code)
    subprocess.run([sys.executable, str(script), str(path)], check=True, capture_output=True, timeout=300)
    p = run("scan", path, "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["dangerous"] == 0
    names = {g["name"] for g in report["globals"]}
    assert any(n.startswith("torch.jit._pickle.") for n in names), names
    assert report["weights_only"]["loads"] is False and "TorchScript" in report["weights_only"]["reason"]


@pytest.mark.parametrize("name", ["yolov5s-train.pt", "ultralytics-train.pt"])
def test_training_checkpoints_need_code_and_strict_refuses(name):
    code, report = scan(FIXTURES / name)
    assert code == 0 and report["verdict"] == "needs-code"
    frameworks = {g.get("framework") for g in report["globals"] if g["class"] == "needs-code"}
    assert "torch.nn" in frameworks and ("YOLOv5" in frameworks or "Ultralytics" in frameworks), frameworks
    modules = [m["module"] for m in report["code_that_would_run"]]
    assert any(m.startswith("models.") or m.startswith("ultralytics.") for m in modules), modules
    assert run("scan", FIXTURES / name, "--strict").returncode == 1
    assert run("scan", FIXTURES / "sd-proto2.pt", "--strict").returncode == 0


def mmengine_like(tmp_path, called):
    """builtins.getattr(HistoryBuffer, 'min'), as mmengine's message hub pickles its statistics methods: stored, or
    (the attack) called."""
    g = b"cbuiltins\ngetattr\n(cmmengine.logging.history_buffer\nHistoryBuffer\nX\x03\x00\x00\x00mintR"
    value = g + (b")R" if called else b"")
    pkl = b"\x80\x02}(X\x06\x00\x00\x00methodq\x00" + value + b"u."
    path = tmp_path / ("called.pt" if called else "stored.pt")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")
    return path


def test_getattr_of_a_constant_name_is_a_reference(tmp_path):
    code, report = scan(mmengine_like(tmp_path, called=False))
    assert code == 0, report["globals"]
    rows = {(g["name"], g["use"]): g for g in report["globals"]}
    assert rows[("builtins.getattr", "getattr-constant")]["class"] == "safe"
    assert rows[("mmengine.logging.history_buffer.HistoryBuffer.min", "referenced")]["via"] == "getattr"
    code, report = scan(mmengine_like(tmp_path, called=True))
    assert code == 1
    called = [g for g in report["globals"] if g["use"] == "called" and g["class"] == "dangerous"]
    assert [g["name"] for g in called] == ["mmengine.logging.history_buffer.HistoryBuffer.min"], called
