"""ckpt info / keys against torch's own answers, on the fixtures and on files torch writes here."""
import collections
import json
import math
import random
import zipfile

import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES, assert_clean_failure, fixture_files, run, run_json, torch_facts


def committed_facts(path):
    return json.loads(path.with_suffix(".facts.json").read_text())


def keys_of(path, record):
    args = ["keys", path] + (["--record", record] if record else [])
    return run_json(*args)


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_keys_equal_torch_state_dict_for_every_record(path):
    facts = torch_facts.facts(str(path))
    assert facts["state_dicts"] == committed_facts(path)["state_dicts"], "committed facts are stale"
    assert facts["state_dicts"], "fixture has no tensor-bearing record"
    for record, expected in facts["state_dicts"].items():
        got = keys_of(path, record)
        assert got == expected, f"{path.name} record {record!r}"


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_info_agrees_with_torch(path):
    facts = torch_facts.facts(str(path))
    info = run_json("info", path)
    assert info["root"] == facts["root"]
    if facts["root"] is not None:
        assert info["record_count"] == len(facts["records_in_zip"])
    else:
        storages = {t.untyped_storage().data_ptr() for t in torch.load(path, weights_only=False).values()}
        assert info["format"] == "torch legacy" and info["record_count"] == len(storages)
    assert info["file_size"] == path.stat().st_size
    got = {r["name"]: r for r in info["records"]}
    if facts["top_kind"] == "dict":
        assert list(got) == list(facts["records"]), "record names and order"
    for name, want in facts["records"].items():
        r = got[name]
        assert r["kind"] == want["kind"], f"{name}: {r['kind']} vs {want['kind']}"
        if want["kind"] == "module":
            assert r["class"] == want["class"]
        if want["kind"] in ("scalar", "string") and "value" in want:
            v = want["value"]
            if isinstance(v, float) and math.isnan(v):
                assert r["value"] == "nan"
            elif isinstance(v, str) and want["kind"] == "scalar":
                assert str(r["value"]) == v
            else:
                assert r["value"] == v, name
        if want["kind"] == "array" and "value" in want:
            assert r.get("value", want["value"]) == want["value"]
        for field in ("tensors", "elements", "bytes", "storage_bytes"):
            if field in want:
                assert r[field] == want[field], f"{name}.{field}"


def test_yolov5_info_reports_training_scalars():
    path = FIXTURES / "yolov5s-train.pt"
    x = torch.load(path, weights_only=False)
    info = {r["name"]: r for r in run_json("info", path)["records"]}
    assert info["epoch"]["value"] == x["epoch"]
    assert info["best_fitness"]["value"] == float(x["best_fitness"][0])
    assert info["date"]["value"] == x["date"]
    assert info["model"]["class"] == "models.yolo.DetectionModel"
    assert info["optimizer"]["kind"] == "optimizer"


def test_keys_prefix_and_match_filter_like_torch():
    path = FIXTURES / "yolov5s-train.pt"
    sd = torch.load(path, weights_only=False)["model"].state_dict()
    got = run_json("keys", path, "--prefix", "model.9.")
    assert [k["name"] for k in got] == [k for k in sd if k.startswith("model.9.")]
    got = run_json("keys", path, "--match", "*.bn.running_*")
    import fnmatch
    assert [k["name"] for k in got] == [k for k in sd if fnmatch.fnmatchcase(k, "*.bn.running_*")]
    text = run("keys", path, "--prefix", "model.9.cv1.conv.", check=0).stdout.split()
    assert text == ["model.9.cv1.conv.weight", "float16", "[32,", "64,", "1,", "1]"] or text[0] == "model.9.cv1.conv.weight"


def test_keys_defaults_to_ema_when_model_is_none():
    path = FIXTURES / "ultralytics-train.pt"
    sd = torch.load(path, weights_only=False)["ema"].state_dict()
    assert [k["name"] for k in run_json("keys", path)] == list(sd)


def test_optimizer_record_lists_state_tensors():
    path = FIXTURES / "yolov5s-train.pt"
    opt = torch.load(path, weights_only=False)["optimizer"]
    want = [f"state.{i}.{k}" for i, s in opt["state"].items() for k, v in s.items() if torch.is_tensor(v)]
    assert [k["name"] for k in run_json("keys", path, "--record", "optimizer")] == want


# Checkpoints torch writes during the test.

class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.register_buffer("persistent_buf", torch.arange(4))
        self.register_buffer("scratch", torch.zeros(5), persistent=False)
        self.register_parameter("maybe", None)
        self.head = nn.ModuleDict({"a": nn.Linear(8, 2), "b": nn.Identity()})
        self.tied = self.head["a"]
        self.seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1, bias=False))


def expected_keys(obj):
    sd = obj.state_dict() if isinstance(obj, nn.Module) else obj
    return [{"name": k, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in sd.items()]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("what", ["module", "state_dict", "half_state_dict", "nested"])
def test_keys_on_checkpoints_torch_writes_now(tmp, protocol, what):
    torch.manual_seed(protocol)
    m = WithBuffers()
    if what == "module":
        obj, record = m, None
    elif what == "state_dict":
        obj, record = m.state_dict(), None
    elif what == "half_state_dict":
        obj, record = m.half().state_dict(), None
    else:
        obj, record = {"epoch": 1, "model": {"state_dict": m.state_dict()}}, "model.state_dict"
    path = tmp / f"{what}.pt"
    torch.save(obj, path, pickle_protocol=protocol)
    want = expected_keys(m if what == "module" else (obj if record is None else obj["model"]["state_dict"]))
    got = keys_of(path, record)
    assert got == want


def test_bytesio_saved_file_has_archive_root(tmp):
    import io
    buf = io.BytesIO()
    torch.save({"model": nn.Linear(2, 2)}, buf)
    path = tmp / "u.pt"
    path.write_bytes(buf.getvalue())
    assert run_json("info", path)["root"] == "archive"
    assert [k["name"] for k in keys_of(path, None)] == ["weight", "bias"]


# Bad input.

def small_fixture():
    return FIXTURES / "sd-proto2.pt"


def test_truncated_at_many_offsets_exits_2_with_one_line(tmp):
    data = (FIXTURES / "yolov5s-train.pt").read_bytes()
    rnd = random.Random(1)
    offsets = sorted(set([0, 1, 4, 22, 30, 100, len(data) - 1, len(data) - 22, len(data) - 23, len(data) - 56])
                     | set(rnd.randrange(len(data)) for _ in range(40)))
    for cut in offsets:
        p = tmp / f"cut{cut}.pt"
        p.write_bytes(data[:cut])
        for cmd in ("info", "keys"):
            assert_clean_failure(run(cmd, p), p)


def rewrite_pickle(src, dst, transform):
    """Copies a torch zip with data.pkl replaced (valid CRC), the way a damaged writer would leave it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = transform(data)
            zout.writestr(info.filename, data)


def test_pickle_cut_at_every_offset_exits_2(tmp):
    src = small_fixture()
    with zipfile.ZipFile(src) as z:
        pkl = z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])
    for cut in range(0, len(pkl)):
        p = tmp / "t.pt"
        rewrite_pickle(src, p, lambda d: d[:cut])
        assert_clean_failure(run("keys", p), p)


def test_pickle_with_random_damage_never_crashes(tmp):
    src = FIXTURES / "dtypes.pt"
    rnd = random.Random(7)
    for i in range(150):
        def damage(d):
            d = bytearray(d)
            for _ in range(rnd.randint(1, 4)):
                d[rnd.randrange(len(d))] = rnd.randrange(256)
            return bytes(d)
        p = tmp / f"d{i}.pt"
        rewrite_pickle(src, p, damage)
        for cmd in ("info", "keys"):
            r = run(cmd, p)
            assert r.returncode in (0, 2), f"{cmd} on damage #{i}: exit {r.returncode} {r.stderr[-500:]}"
            if r.returncode == 2:
                assert_clean_failure(r, p)


def test_flipped_storage_byte_is_a_crc_error_when_data_is_read(tmp):
    data = bytearray((FIXTURES / "sd-proto2.pt").read_bytes())
    with zipfile.ZipFile(FIXTURES / "sd-proto2.pt") as z:
        info = [i for i in z.infolist() if i.filename.endswith("/data/0")][0]
        off = info.header_offset
    # data starts at the next 64-byte boundary after the local header
    start = off + 30 + len(info.filename) + 4
    start += (-start) % 64
    data[start] ^= 0xFF
    p = tmp / "flip.pt"
    p.write_bytes(bytes(data))
    r = run("strip", p, tmp / "out.pt")
    assert_clean_failure(r, p)
    assert "crc" in r.stderr.lower()
    assert not (tmp / "out.pt").exists()


def test_missing_file_and_not_a_zip(tmp):
    assert_clean_failure(run("info", tmp / "nope.pt"))
    p = tmp / "text.pt"
    p.write_text("hello")
    assert_clean_failure(run("keys", p), p)


def test_unknown_record_is_an_error():
    r = run("keys", FIXTURES / "yolov5s-train.pt", "--record", "nope")
    assert_clean_failure(r)
    assert "nope" in r.stderr
