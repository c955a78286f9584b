"""Python 2 era and torch 0.1.x checkpoints (fixtures/legacy/, built opcode by opcode by
scripts/make-legacy-fixtures.py) against torch 2.13: torch.load(weights_only=False, map_location='cpu') of the input
is the oracle for what every read command reports, and of every output for what every rewriting command wrote.

The files hold what only Python 2's pickle or an old torch wrote: OrderedDicts and dicts built by calling the class
with a list of [key, value] lists or (key, value) tuples, Python 2 str keys (SHORT_BINSTRING, BINSTRING),
torch._utils._rebuild_tensor (v1), storages on cuda:N, storage views, and the torch 0.1.x tar format."""
import fnmatch
import json
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import FIXTURES, assert_clean_failure, run, run_json
from test_formats import convert_py_aliases, split_metadata

LEGACY = FIXTURES / "legacy"
# Every fixture torch 2.13 loads.
READABLE = ["py2-torch03-sd.pth", "py2-dict-tuples.pth", "py2-storage-view.pth", "py2-diff-b.pth", "torch01-tar.pt",
            # Real Python 2 files, from the lpips 0.1.4 wheel on PyPI (lpips/weights/v0.x/alex.pth; LICENSE-lpips).
            "lpips-v0.0-alex.pth", "lpips-v0.1-alex.pth"]


def torch_load(path, weights_only=False):
    return torch.load(path, weights_only=weights_only, map_location="cpu")


def is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())


def weights(obj):
    """The state dict ckpt's default record names: the object itself, or its `model` record."""
    return obj if is_state_dict(obj) else obj["model"]


def listing(sd):
    return [{"name": k, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in sd.items()]


def bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same(got, want):
    """Same names in the same order; each tensor the same dtype, shape and bytes."""
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(bits(got[k]), bits(want[k])), f"{k}: bytes differ"


@pytest.fixture(params=READABLE)
def legacy(request):
    return LEGACY / request.param


def test_keys_match_torch(legacy):
    assert run_json("keys", legacy) == listing(weights(torch_load(legacy)))


def test_info_totals_and_scan_verdict_match_torch(legacy):
    try:
        torch.load(legacy, weights_only=True, map_location="cpu")
        loads = True
    except Exception:  # noqa: BLE001 - the verdict is the fact
        loads = False
    p = run("scan", legacy, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["weights_only"]["loads"] == loads
    sd = weights(torch_load(legacy))
    info = run_json("info", legacy)
    recs = [r for r in info["records"] if "tensors" in r]
    assert sum(r["tensors"] for r in recs) == len(sd)
    assert sum(r["elements"] for r in recs) == sum(t.numel() for t in sd.values())
    assert sum(r["bytes"] for r in recs) == sum(t.numel() * t.element_size() for t in sd.values())


@pytest.mark.parametrize("pair", [("py2-torch03-sd.pth", "py2-diff-b.pth", 2),
                                  ("lpips-v0.0-alex.pth", "lpips-v0.1-alex.pth", 5)])
def test_diff_reports_exactly_the_differing_tensors(pair):
    a, b = LEGACY / pair[0], LEGACY / pair[1]
    ta, tb = torch_load(a), torch_load(b)
    want = {k: ("shape" if ta[k].shape != tb[k].shape else "values") for k in ta
            if ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k])}
    # The made pair differs in one tensor's values and one tensor's shape; lpips v0.0 and v0.1 in every tensor.
    assert len(want) == pair[2]
    p = run("diff", a, b, "--values", "--json")
    assert p.returncode == 1, p.stderr
    got = {t["name"]: t["changes"] for t in json.loads(p.stdout)["tensors"]}
    assert got == {k: [v] for k, v in want.items()}
    same = run("diff", a, a, "--values")
    assert same.returncode == 0, same.stdout + same.stderr


def test_diff_without_values_never_says_the_values_are_equal():
    # lpips v0.0 and v0.1 have the same names, dtypes and shapes but other values (torch says so): a diff that did
    # not compare values must say that it did not, never a bare "no differences".
    a, b = LEGACY / "lpips-v0.0-alex.pth", LEGACY / "lpips-v0.1-alex.pth"
    ta, tb = torch_load(a), torch_load(b)
    assert [(k, v.dtype, v.shape) for k, v in ta.items()] == [(k, v.dtype, v.shape) for k, v in tb.items()]
    assert any(not torch.equal(ta[k], tb[k]) for k in ta)
    p = run("diff", a, b)
    assert p.returncode == 0, p.stderr
    summary = p.stdout.strip().splitlines()[-1]
    assert summary.startswith("no differences in names, dtypes and shapes") and "values not compared" in summary
    assert run("diff", a, b, "--values").returncode == 1


def test_diff_legacy_against_its_zip_conversion(legacy, tmp_path):
    out = tmp_path / "z.pt"
    run("convert", legacy, out, check=0)
    p = run("diff", legacy, out, "--values")
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_convert_is_bit_identical(legacy, tmp_path, ext):
    out = tmp_path / f"out.{ext}"
    run("convert", legacy, out, check=0)
    want = weights(torch_load(legacy))
    if ext == "safetensors":
        # Tensors sharing a storage are stored once, as Hugging Face's convert.py stores them (README).
        aliases = convert_py_aliases(want)
        got = load_file(out)
        assert sorted(got) == sorted(k for k in want if k not in aliases)
        for k in got:
            assert torch.equal(bits(got[k]), bits(want[k].contiguous())), k
        with safe_open(out, "pt") as f:
            meta, _ = split_metadata(f.metadata())
        assert {k: v for k, v in meta.items() if k != "format"} == aliases
    else:
        assert_same(torch_load(out, weights_only=True), want)


def expect_strip(src, flag, sd):
    """What each strip option must leave of the weights, computed with torch."""
    first = next(iter(sd))
    prefix = first.split(".")[0] + "."
    if flag == "plain" or flag == "--state-dict":
        return [], dict(sd)
    if flag == "--half":
        return ["--half"], {k: v.half() if v.dtype in (torch.float32, torch.float64, torch.bfloat16) else v
                            for k, v in sd.items()}
    if flag == "--drop":
        return ["--drop", first], {k: v for k, v in sd.items() if not fnmatch.fnmatchcase(k, first)}
    if flag == "--rename":
        return ["--rename", f"{prefix}=renamed_{prefix}"], {
            ("renamed_" + k if k.startswith(prefix) else k): v for k, v in sd.items()}
    raise AssertionError(flag)


@pytest.mark.parametrize("flag", ["plain", "--half", "--drop", "--rename", "--state-dict"])
def test_strip_outputs_load_in_torch(legacy, tmp_path, flag):
    src = torch_load(legacy)
    args, want = expect_strip(legacy, flag, weights(src))
    if flag == "--state-dict":
        args = ["--state-dict"]
    out = tmp_path / "out.pt"
    summary = json.loads(run("strip", legacy, out, *args, "--json", check=0).stdout)
    # What it reports is what it wrote: the parameters (elements) of the weights torch loads from the output.
    assert summary["parameters"] == sum(t.numel() for t in want.values())
    assert zipfile.is_zipfile(out)
    got = torch_load(out, weights_only=(flag == "--state-dict"))
    assert_same(weights(got), want)
    if flag != "--state-dict" and hasattr(weights(src), "_metadata"):
        assert weights(got)._metadata == weights(src)._metadata


def test_transfer_between_python2_files(tmp_path):
    """INTO's tensors replaced by FROM's where name and shape match (cast to INTO's dtype), as torch computes it."""
    frm, into = LEGACY / "py2-diff-b.pth", LEGACY / "py2-torch03-sd.pth"
    a, b = torch_load(into), torch_load(frm)
    want = {k: (b[k].to(v.dtype) if k in b and b[k].shape == v.shape else v) for k, v in a.items()}
    out = tmp_path / "t.pt"
    run("transfer", frm, into, out, check=0)
    assert_same(torch_load(out), want)


def test_tar_converts_to_zip(tmp_path):
    src = LEGACY / "torch01-tar.pt"
    with pytest.raises(Exception, match="legacy .tar format"):
        torch.load(src, weights_only=True)
    assert run_json("info", src)["format"] == "torch legacy tar"
    for cmd, out in [("strip", tmp_path / "s.pt"), ("convert", tmp_path / "c.pt")]:
        run(cmd, src, out, check=0)
        assert zipfile.is_zipfile(out)
        assert run_json("info", out)["format"] == "torch zip"
        assert_same(torch_load(out, weights_only=True), torch_load(src))


def test_storage_locations_are_kept(tmp_path):
    """A cuda:N storage keeps its location on rewrite; torch maps it to the CPU when asked."""
    for name in ["py2-torch03-sd.pth", "py2-dict-tuples.pth", "torch01-tar.pt"]:
        out = tmp_path / (name + ".pt")
        run("convert", LEGACY / name, out, check=0)
        with zipfile.ZipFile(out) as z:
            pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        assert b"cuda:" in pkl, name
        if not torch.cuda.is_available():
            with pytest.raises(RuntimeError, match="CUDA"):
                torch.load(out, weights_only=True)


def test_python2_str_that_is_not_utf8_is_refused_as_torch_refuses_it(tmp_path):
    src = LEGACY / "py2-not-utf8.pth"
    with pytest.raises(UnicodeDecodeError):
        torch_load(src)
    for args in [("keys", src), ("info", src), ("convert", src, tmp_path / "o.safetensors"),
                 ("strip", src, tmp_path / "o.pt"), ("diff", src, src), ("scan", src)]:
        p = run(*args)
        assert_clean_failure(p, src)
        assert "UTF-8" in p.stderr
    assert not any(tmp_path.iterdir())
