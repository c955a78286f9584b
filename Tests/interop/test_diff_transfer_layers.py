"""ckpt diff / transfer / layers against torch's own computations: strip then diff, YOLOv5's intersect_dicts,
load_state_dict(strict=True), YOLOv5 train.py's freeze rule, torch's `.to(dtype)` rounding."""
import collections
import json
import math

import numpy as np
import pytest
import torch

from conftest import FIXTURES, assert_clean_failure, fixture_files, run
from models.yolo import DetectionModel, yolov5s_cfg
from tiny_resnet import ResNet

YOLO = FIXTURES / "yolov5s-train.pt"
NC3 = FIXTURES / "yolov5s-nc3-init.pt"


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def run_json_rc(*args, rc):
    p = run(*args, "--json")
    assert p.returncode == rc, f"exit {p.returncode}: {p.stderr}"
    return json.loads(p.stdout)


# ---------------------------------------------------------------------------------------------------- torch side

def deep_equal(a, b):
    """Whether two loaded values are the same, as a user would judge them."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        return list(sa) == list(sb) and all(deep_equal(sa[k], sb[k]) for k in sa)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def intersect_dicts(da, db, exclude=()):
    # YOLOv5 utils/general.py, verbatim
    return {k: v for k, v in da.items() if k in db and all(x not in k for x in exclude) and v.shape == db[k].shape}


def allclose_counts(a, b, atol=0.0, rtol=0.0):
    """Elements torch.isclose(equal_nan=True) calls different, in float64, and max |a-b|."""
    x, y = a.double().reshape(-1), b.double().reshape(-1)
    close = torch.isclose(x, y, atol=atol, rtol=rtol, equal_nan=True)
    d = (x - y).abs()
    d = torch.where(close & ~torch.isfinite(d), torch.zeros_like(d), d)
    d = torch.where(torch.isnan(d), torch.full_like(d, math.inf), d)
    return int((~close).sum()), float(d.max()) if d.numel() else 0.0


# ---------------------------------------------------------------------------------------------------- diff

def test_diff_of_checkpoint_and_its_strip_shows_exactly_what_strip_changed(tmp):
    out = tmp / "stripped.pt"
    stripped = json.loads(run("strip", YOLO, out, "--json", check=0).stdout)
    report = run_json_rc("diff", YOLO, out, rc=1)
    a, b = load(YOLO), load(out)
    changed_by_torch = [k for k in a if not deep_equal(a[k], b[k])]
    assert changed_by_torch  # strip changed something
    assert [r["name"] for r in report["records"]] == changed_by_torch
    assert {r["name"] for r in report["records"]} == set(stripped["records"])
    assert all(r["change"] == "changed" for r in report["records"])
    assert {r["name"]: r["b"] for r in report["records"]}["optimizer"] == "None"
    assert {r["name"]: (r["a"], r["b"]) for r in report["records"]}["epoch"] == (str(a["epoch"]), "-1")
    assert report["tensors"] == []  # the model is untouched
    human = run("diff", YOLO, out)
    assert human.returncode == 1 and "epoch" in human.stdout and "files differ" in human.stdout


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_diff_of_a_file_with_itself_is_equal_exit_0(path):
    report = run_json_rc("diff", path, path, "--values", rc=0)
    assert report["equal"] and report["records"] == [] and report["tensors"] == []
    p = run("diff", path, path)
    assert p.returncode == 0 and "no differences" in p.stdout


def values_pair(tmp):
    torch.manual_seed(0)
    base = torch.randn(6, 5)
    a = collections.OrderedDict(
        same=torch.randn(7),
        changed=torch.randn(4, 3),
        transposed=base.t(),  # non-contiguous view in A, contiguous copy in B
        sliced=torch.randn(10, 8)[2:5, 1:7:2],  # step slice inside a larger storage
        offset=torch.randn(100)[50:60],
        expanded=torch.randn(3, 1).expand(3, 4),
        reshaped=torch.randn(2, 3),
        retyped=torch.randn(3, 3),
        ints=torch.arange(12).reshape(3, 4),
        nans=torch.tensor([1.0, float("nan"), float("inf"), -0.0]),
        gone=torch.zeros(2),
    )
    b = collections.OrderedDict((k, v.clone().contiguous()) for k, v in a.items())
    b["changed"][1, 2] += 0.5
    b["changed"][3, 0] = -b["changed"][3, 0]
    b["sliced"][0, 0] += 1e-3
    b["reshaped"] = b["reshaped"].reshape(3, 2)
    b["retyped"] = b["retyped"].double()
    b["ints"][2, 3] = 99
    b["nans"] = torch.tensor([1.0, float("nan"), float("-inf"), 0.0])
    del b["gone"]
    b["new"] = torch.ones(1)
    torch.save(a, tmp / "a.pt")
    torch.save(b, tmp / "b.pt")
    return a, b


@pytest.mark.parametrize("atol", [0.0, 1e-2])
def test_diff_values_agree_with_torch_isclose(tmp, atol):
    a, b = values_pair(tmp)
    args = ["diff", tmp / "a.pt", tmp / "b.pt", "--values"] + (["--atol", atol] if atol else [])
    report = run_json_rc(*args, rc=1)
    got = {t["name"]: t for t in report["tensors"]}
    assert got["gone"]["changes"] == ["only in A"] and got["new"]["changes"] == ["only in B"]
    assert got["reshaped"]["changes"] == ["shape"]
    assert got["reshaped"]["a"]["shape"] == [2, 3] and got["reshaped"]["b"]["shape"] == [3, 2]
    assert got["retyped"]["changes"] == ["dtype"]  # values equal across float32/float64
    assert got["retyped"]["b"]["dtype"] == "float64"
    for k in a:
        if k not in b or a[k].shape != b[k].shape:
            continue
        n, m = allclose_counts(a[k], b[k], atol=atol)
        if n == 0 and a[k].dtype == b[k].dtype:
            assert k not in got, k
            continue
        t = got[k]
        assert t["differing"] == n, k
        assert t["elements"] == a[k].numel()
        assert ("values" in t["changes"]) == (n > 0)
        assert float(t["max_abs_diff"]) == pytest.approx(m, rel=1e-12), k  # JSON spells inf "inf"
    assert report["values_compared"] == sum(1 for k in a if k in b and a[k].shape == b[k].shape)


def test_fp32_and_its_fp16_copy_are_equal_within_atol(tmp):
    sd = load(NC3)["model"].state_dict()
    half = collections.OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items())
    torch.save(sd, tmp / "fp32.pt")
    torch.save(half, tmp / "fp16.pt")
    worst = max(float((sd[k].double() - half[k].double()).abs().max()) for k in sd if sd[k].numel())
    assert worst > 0
    report = run_json_rc("diff", tmp / "fp32.pt", tmp / "fp16.pt", "--values", "--atol", worst, rc=1)
    floats = [k for k, v in sd.items() if v.is_floating_point()]
    assert sorted(t["name"] for t in report["tensors"]) == sorted(floats)
    assert all(t["changes"] == ["dtype"] and t["differing"] == 0 for t in report["tensors"])
    assert report["largest_abs_diff"] == pytest.approx(worst, rel=1e-12)
    tight = run_json_rc("diff", tmp / "fp32.pt", tmp / "fp16.pt", "--values", "--atol", worst / 4, rc=1)
    for t in tight["tensors"]:
        n, _ = allclose_counts(sd[t["name"]], half[t["name"]], atol=worst / 4)
        assert t["differing"] == n
    assert any(t["differing"] for t in tight["tensors"])


def test_diff_record_option_and_module_vs_state_dict(tmp):
    # strip --state-dict turns the module into a plain dict: same keys, so the model record compares equal.
    out = tmp / "sd.pt"
    run("strip", YOLO, out, "--state-dict", check=0)
    report = run_json_rc("diff", YOLO, out, "--record", "model", "--values", rc=1)
    assert report["tensors"] == []
    assert [r["name"] for r in report["records"]] == ["model"]  # a module became a dict
    n = len(load(YOLO)["model"].state_dict())
    assert report["compared"] == [{"record": "model", "tensors_a": n, "tensors_b": n, "common": n}]


def test_diff_reports_nested_record_changes(tmp):
    ck = load(YOLO)
    ck["opt"] = dict(ck["opt"], epochs=ck["opt"]["epochs"] + 1)
    ck["model"].nc = 7
    torch.save(ck, tmp / "edited.pt")
    report = run_json_rc("diff", YOLO, tmp / "edited.pt", rc=1)
    recs = {r["name"]: r for r in report["records"]}
    assert set(recs) == {"opt", "model"}
    assert {d["path"] for d in recs["opt"]["details"]} == {"opt.epochs"}
    assert {d["path"] for d in recs["model"]["details"]} == {"model.nc"}


def test_diff_bad_input_exits_2_with_one_line(tmp):
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert_clean_failure(run("diff", YOLO, junk), junk)
    assert_clean_failure(run("diff", tmp / "missing.pt", YOLO), tmp / "missing.pt")
    assert_clean_failure(run("diff", YOLO, NC3, "--record", "nope"), YOLO)
    p = run("diff", YOLO, YOLO, "--atol=-1")
    assert p.returncode == 2 and p.stderr.startswith("ckpt: ") and p.stdout == ""


# ---------------------------------------------------------------------------------------------------- transfer

@pytest.mark.parametrize("exclude", [[], ["anchor"]])
def test_transfer_keeps_exactly_what_intersect_dicts_keeps(tmp, exclude):
    out = tmp / "out.pt"
    args = ["transfer", YOLO, NC3, out] + [x for e in exclude for x in ("--exclude", e)]
    report = json.loads(run(*args, "--json", check=0).stdout)
    src, into = load(YOLO), load(NC3)
    csd = src["model"].float().state_dict()  # YOLOv5 train.py
    db = into["model"].state_dict()
    kept = intersect_dicts(csd, db, exclude=exclude)
    assert report["transferred_keys"] == [k for k in db if k in kept]
    assert (report["transferred"], report["total"]) == (len(kept), len(db))
    reasons = {r["key"]: r["reason"] for r in report["not_transferred"]}
    assert set(reasons) == set(db) - set(kept)
    for k, r in reasons.items():
        if k in csd and csd[k].shape != db[k].shape:
            assert r == f"shape {list(csd[k].shape)} vs {list(db[k].shape)}"
        else:
            assert r == f"excluded by '{exclude[0]}'"
    human = run(*args, "--dry-run", check=0)
    assert human.stdout.splitlines()[0] == f"Transferred {len(kept)}/{len(db)} items from {YOLO}"

    # torch loads OUT into a freshly built nc=3 model, strictly; every value is FROM's (cast) or INTO's.
    osd = load(out)["model"].state_dict()
    model = DetectionModel(yolov5s_cfg(nc=80), ch=3, nc=3)
    model.load_state_dict(osd, strict=True)
    for k, v in osd.items():
        want = kept[k].to(db[k].dtype) if k in kept else db[k]
        assert v.dtype == db[k].dtype and torch.equal(v, want), k
    # INTO's metadata stays: Parameter-ness and requires_grad.
    got = dict(load(out)["model"].named_parameters())
    assert [(k, p.requires_grad) for k, p in got.items()] == [(k, p.requires_grad) for k, p in into["model"].named_parameters()]


def test_transfer_between_a_state_dict_and_a_module(tmp):
    sd_from = tmp / "from-sd.pt"
    run("strip", YOLO, sd_from, "--state-dict", check=0)
    out = tmp / "out.pt"
    report = json.loads(run("transfer", sd_from, NC3, out, "--json", check=0).stdout)
    csd = {k: v.float() for k, v in load(sd_from)["model"].items()}
    db = load(NC3)["model"].state_dict()
    assert report["transferred_keys"] == [k for k in db if k in intersect_dicts(csd, db)]
    DetectionModel(yolov5s_cfg(nc=80), ch=3, nc=3).load_state_dict(load(out)["model"].state_dict(), strict=True)

    # And into a plain state dict, from module objects.
    into_sd = tmp / "into-sd.pt"
    torch.save(db, into_sd)
    out2 = tmp / "out2.pt"
    report = json.loads(run("transfer", YOLO, into_sd, out2, "--json", check=0).stdout)
    kept = intersect_dicts(load(YOLO)["model"].float().state_dict(), db)
    assert report["transferred"] == len(kept)
    osd = torch.load(out2, weights_only=True)
    assert list(osd) == list(db)
    for k, v in osd.items():
        assert torch.equal(v, kept[k].to(v.dtype) if k in kept else db[k]), k


FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def conversion_sources():
    torch.manual_seed(5)
    special = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.0, -1.0, 65504.0, 65520.0, 1e5, -1e5,
               6.1e-5, 5.96e-8, 2.98e-8, 1e-8, 1e-40, 1.17549435e-38, 3.4e38, -3.4e38, 3e38, 1e300, -1e300, 1e-300,
               1 + 2 ** -11, 1 + 2 ** -8, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -40, 2049.0, 2051.0, 257.0, 259.0]
    wide = torch.randn(2000, dtype=torch.float64) * torch.logspace(-12, 12, 2000, dtype=torch.float64)
    # Doubles just past a float32 rounding boundary that lands on a float16 tie: double rounding shows.
    tie = torch.tensor([1 + 2 ** -11 + 2 ** -30, 1 + 2 ** -8 + 2 ** -30], dtype=torch.float64)
    base = torch.cat([torch.tensor(special, dtype=torch.float64), wide, tie])
    return {dt: base.to(dt) for dt in FLOATS}


def test_transfer_casts_bit_identically_to_torch_to(tmp):
    src = conversion_sources()
    names = {dt: str(dt).split(".")[1] for dt in FLOATS}
    from_sd = collections.OrderedDict((f"{names[s]}_to_{names[d]}", src[s]) for s in FLOATS for d in FLOATS)
    into_sd = collections.OrderedDict((f"{names[s]}_to_{names[d]}", torch.zeros(src[s].shape, dtype=d))
                                      for s in FLOATS for d in FLOATS)
    torch.save(from_sd, tmp / "from.pt")
    torch.save(into_sd, tmp / "into.pt")
    report = json.loads(run("transfer", tmp / "from.pt", tmp / "into.pt", tmp / "out.pt", "--json", check=0).stdout)
    assert report["transferred"] == 16
    out = torch.load(tmp / "out.pt", weights_only=True)
    bits = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}
    for s in FLOATS:
        for d in FLOATS:
            k = f"{names[s]}_to_{names[d]}"
            want = src[s].to(d)
            assert out[k].dtype == d
            differ = out[k].view(bits[d]) != want.view(bits[d])
            if (s, d) == (torch.float64, torch.bfloat16):
                # torch itself writes NaN as 0xFFFF in 16-element blocks and 0x7FC0 in the tail: NaN-ness only.
                assert torch.equal(out[k].isnan(), want.isnan())
                differ &= ~want.isnan()
            mismatch = differ.nonzero().flatten()
            assert mismatch.numel() == 0, f"{k}: {src[s][mismatch[:3]].tolist()} -> {out[k][mismatch[:3]].tolist()} vs {want[mismatch[:3]].tolist()}"


def test_transfer_compacts_views_and_slices(tmp):
    torch.manual_seed(2)
    big = torch.randn(64, 48)
    from_sd = collections.OrderedDict(
        transposed=big.t(),
        step=big[1:40:3, 5:45:4],
        rows=big[10:20],  # contiguous slice at an offset of a larger storage
        expanded=torch.randn(5, 1).expand(5, 6),
        scalar=big[3, 4],
        fp16_view=big.half().t()[7:30],
    )
    into_sd = collections.OrderedDict((k, torch.zeros(v.shape)) for k, v in from_sd.items())
    torch.save(from_sd, tmp / "from.pt")
    torch.save(into_sd, tmp / "into.pt")
    run("transfer", tmp / "from.pt", tmp / "into.pt", tmp / "out.pt", check=0)
    out = torch.load(tmp / "out.pt", weights_only=True)
    for k, v in from_sd.items():
        assert out[k].dtype == torch.float32 and torch.equal(out[k], v.float()), k
        assert out[k].is_contiguous()
        assert out[k].untyped_storage().nbytes() == v.numel() * 4, f"{k}: storage holds only the elements"


def test_transfer_bad_input_exits_2_and_writes_nothing(tmp):
    junk = tmp / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    out = tmp / "out.pt"
    assert_clean_failure(run("transfer", junk, NC3, out), junk)
    assert_clean_failure(run("transfer", YOLO, tmp / "missing.pt", out), tmp / "missing.pt")
    assert_clean_failure(run("transfer", YOLO, NC3, out, "--from-record", "nope"), YOLO)
    assert not out.exists()
    # A FROM whose storage record is shorter than its tensors claim.
    torch.save({"w": torch.randn(8)}, tmp / "short.pt")
    torch.save({"w": torch.zeros(8)}, tmp / "into.pt")
    import zipfile
    with zipfile.ZipFile(tmp / "short.pt") as z:
        items = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(tmp / "cut.pt", "w", zipfile.ZIP_STORED) as z:
        for i, data in items:
            z.writestr(i.filename, data[:16] if i.filename.endswith("data/0") else data)
    assert_clean_failure(run("transfer", tmp / "cut.pt", tmp / "into.pt", out), tmp / "cut.pt")
    assert not out.exists()


def test_transfer_that_matches_nothing_is_refused(tmp):
    # intersect_dicts of a ResNet state dict and a YOLOv5 model is empty (torch computes it): a copy of INTO with
    # nothing of FROM in it is not reported as a transfer.
    frm = torch.load(FIXTURES / "resnet-sd.pt", weights_only=True)
    into = torch.load(NC3, weights_only=False)["model"].state_dict()
    assert not [k for k, v in into.items() if k in frm and frm[k].shape == v.shape]
    out = tmp / "out.pt"
    p = run("transfer", FIXTURES / "resnet-sd.pt", NC3, out)
    assert_clean_failure(p, NC3)
    assert "no tensor" in p.stderr and not out.exists()


def flipped_copy(src, dst):
    """`src` with the first byte of storage data/0 flipped: only its CRC tells."""
    import zipfile
    with zipfile.ZipFile(src) as z:
        info = [i for i in z.infolist() if i.filename.endswith("/data/0")][0]
    data = bytearray(src.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 4
    start += (-start) % 64
    data[start] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_a_corrupt_storage_is_named_by_transfer_and_diff(tmp):
    torch.save(collections.OrderedDict(w=torch.randn(16), b=torch.randn(4)), tmp / "good.pt")
    bad = flipped_copy(tmp / "good.pt", tmp / "flip.pt")
    # An INTO whose data/0 is a tensor FROM lacks, so its bytes are copied from INTO.
    torch.save(collections.OrderedDict(own=torch.randn(3), w=torch.randn(16)), tmp / "into.pt")
    bad_into = flipped_copy(tmp / "into.pt", tmp / "flip-into.pt")
    out = tmp / "out.pt"
    for args, culprit in ((("transfer", bad, tmp / "good.pt", out), bad),
                          (("transfer", tmp / "good.pt", bad_into, out), bad_into)):
        r = run(*args)
        assert_clean_failure(r, culprit)
        assert "crc" in r.stderr.lower()
        assert not out.exists()
    # INTO's corrupt storage is not needed when FROM replaces its only tensor.
    assert run("transfer", tmp / "good.pt", bad, out).returncode == 0
    r = run("diff", tmp / "good.pt", bad, "--values")
    assert_clean_failure(r, bad)
    assert "crc" in r.stderr.lower()
    assert run("diff", tmp / "good.pt", bad).returncode == 0  # without --values no storage is read


# ---------------------------------------------------------------------------------------------------- layers

def yolov5_freeze(model, n):
    freeze = [f"model.{x}." for x in (n if len(n) > 1 else range(n[0]))]  # YOLOv5 train.py
    return [k for k, v in model.named_parameters() if any(x in k for x in freeze)]


@pytest.mark.parametrize("freeze", [[10], [0], [3], [0, 1, 2, 24]])
def test_layers_freeze_lists_what_yolov5_freezes(freeze):
    report = run_json_rc("layers", YOLO, "--freeze", *freeze, rc=0)
    model = load(YOLO)["model"]
    frozen = yolov5_freeze(model, freeze)
    assert report["freeze"]["frozen"] == frozen
    params = dict(model.named_parameters())
    assert report["freeze"]["trainable"] == [k for k in params if k not in frozen]
    n_frozen = sum(params[k].numel() for k in frozen)
    total = sum(p.numel() for p in params.values())
    assert report["freeze"]["frozen_parameters"] == n_frozen
    assert report["freeze"]["trainable_parameters"] == total - n_frozen
    assert report["freeze"]["frozen_share"] == pytest.approx(n_frozen / total)
    if freeze == [10]:
        assert frozen and all(any(k.startswith(f"model.{i}.") for i in range(10)) for k in frozen)


@pytest.mark.parametrize("path,record", [(YOLO, "model"), (FIXTURES / "ultralytics-train.pt", "ema")])
def test_layers_table_reads_the_module_objects(path, record):
    report = run_json_rc("layers", path, rc=0)
    model = load(path)[record]
    assert report["record"] == record and report["style"] == "yolo"
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    yaml = model.yaml
    depth = yaml["scales"][yaml.get("scale") or next(iter(yaml["scales"]))][0] if yaml.get("scales") else yaml["depth_multiple"]
    specs = yaml["backbone"] + yaml["head"]
    assert len(report["layers"]) == len(model.model) == len(specs)
    for row, m, (f, n, _, _) in zip(report["layers"], model.model, specs):
        assert row["index"] == m.i and row["from"] == str(m.f).replace(" ", "").replace(",", ", ")
        assert row["module"] == m.type
        assert row["parameters"] == m.np == sum(p.numel() for p in m.parameters())
        assert row["n"] == (max(round(n * depth), 1) if n > 1 else n)
        assert row["part"] == ("backbone" if m.i < len(yaml["backbone"]) else "head")


def test_layers_of_a_state_dict_group_by_prefix():
    path = FIXTURES / "resnet-sd.pt"
    report = run_json_rc("layers", path, "--freeze", "2", rc=0)
    model = ResNet()
    model.load_state_dict(load(path))
    tops = list(dict.fromkeys(k.split(".")[0] for k in model.state_dict()))
    assert [r["prefix"] for r in report["layers"]] == [t + "." for t in tops]
    params = dict(model.named_parameters())
    for r in report["layers"]:
        assert r["parameters"] == sum(p.numel() for k, p in params.items() if k.startswith(r["prefix"]))
        assert r["tensors"] == sum(1 for k in model.state_dict() if k.startswith(r["prefix"]))
    assert report["parameters"] == sum(p.numel() for p in params.values())
    assert report["freeze"]["frozen"] == []  # no resnet key contains model.0.

    # A YOLO state dict (strip --state-dict) groups as model.0. ... model.24.
    ddp = run_json_rc("layers", FIXTURES / "resnet-nested.pt", rc=0)
    assert ddp["layers"][0]["prefix"] == "module.conv1."


def test_layers_bad_input_exits_2(tmp):
    assert_clean_failure(run("layers", tmp / "missing.pt"), tmp / "missing.pt")
    assert_clean_failure(run("layers", YOLO, "--record", "nope"), YOLO)
