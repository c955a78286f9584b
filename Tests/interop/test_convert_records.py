"""convert carries the records beside the weights into a .safetensors file's __metadata__ as JSON and restores them
converting back (README: convert). Oracles: safetensors' own safe_open(...).metadata(), Python's json (what
json.dumps makes of each record, read back by json.loads), torch.load of the round trip."""
import collections
import json
import math
import pathlib

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, assert_clean_failure, run, run_json
from plainlib import python_plain
from test_formats import bits, split_metadata

FW = FIXTURES / "frameworks"
WITH_RECORDS = [FIXTURES / "yolov5s-train.pt", FIXTURES / "ultralytics-train.pt", FIXTURES / "resnet-nested.pt",
                FIXTURES / "mmlab-style.pt"] + sorted(p for p in FW.glob("*.pt") if p.name != "ldm.pt")


def python_json(value):
    """Python's own conversion: what json.loads gives back for json.dumps of the value made plain data as strip
    --state-dict makes it (plainlib.python_plain: str(path), vars(ns), OmegaConf.to_container, ...); None when
    either refuses it (a tensor, an unconvertible object, NaN)."""
    try:
        return json.loads(json.dumps(python_plain(value), allow_nan=False))
    except (TypeError, ValueError):
        return None


def metadata(path):
    with safe_open(path, "pt") as f:
        return f.metadata()


def weights_of(obj, record):
    v = obj[record] if record else obj
    return v.state_dict() if isinstance(v, nn.Module) else v


@pytest.mark.parametrize("path", WITH_RECORDS, ids=lambda p: p.name)
def test_records_in_metadata_are_pythons_json_of_them_and_come_back(tmp_path, path):
    original = torch.load(path, weights_only=False, map_location="cpu")
    st, back = tmp_path / "x.safetensors", tmp_path / "back.pt"
    report = run_json("convert", path, st)
    weights = report["record"]
    meta, records = split_metadata(metadata(st))
    assert meta["format"] == "pt"
    # every top-level record is carried or listed as left out, with why; none is both
    others = [k for k in original if k != weights]
    assert sorted(report["records"]) == sorted(records)
    assert sorted(report["records"] + list(report["records_left_out"])) == sorted(others)
    for name in records:
        assert records[name] == python_json(original[name]), name
    for name, why in report["records_left_out"].items():
        # not plain data (json.dumps refuses it) or training state the strip of the same file clears
        assert python_json(original[name]) is None or "training state" in why, (name, why)
    if records:
        assert json.loads(metadata(st)["ckpt.records"]) == [k for k in original if k in records or k == weights]
        assert metadata(st)["ckpt.weights"] == weights

    # back to torch: the records as plain data beside the state dict, in the input's order; tensors bit-identical
    back_report = run_json("convert", st, back)
    loaded = torch.load(back, weights_only=True)
    tensors = load_file(st)
    if records:
        assert back_report["records"] == list(records)
        assert list(loaded) == json.loads(metadata(st)["ckpt.records"])
        assert {k: v for k, v in loaded.items() if k != weights} == records
        loaded = loaded[weights]
    else:
        assert back_report["records"] == []
    assert list(loaded) == list(tensors)
    for k, v in tensors.items():
        assert torch.equal(bits(loaded[k]), bits(v)), k

    # safetensors to safetensors carries them again (aliases are those of the tensors it holds: none)
    again = tmp_path / "again.safetensors"
    run("convert", st, again, check=0)
    assert split_metadata(metadata(again))[1] == records
    assert {k: v for k, v in metadata(again).items() if k.startswith("ckpt.")} == \
        {k: v for k, v in metadata(st).items() if k.startswith("ckpt.")}


def test_a_described_model_carries_its_config_and_says_what_json_changes(tmp_path):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ckpt = collections.OrderedDict([
        ("epoch", 7),
        ("model", net),
        ("model_config", {"yaml": {"nc": 2, "depth_multiple": 0.33, "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]]]},
                          "names": {0: "cat", 1: "dog"}, "nc": 2, "stride": (8.0, 16.0, 32.0),
                          "big": 2 ** 80, "neg": -(2 ** 70), "none": None, "flag": True, "text": "é 名前 \"q\"\n"}),
        ("hyper_parameters", collections.OrderedDict([("lr", 1e-05), ("betas", (0.9, 0.999)), ("tiny", 5e-324)])),
        ("save_dir", pathlib.PosixPath("runs/train/exp")),
        ("nan", float("nan")),
        ("stats", {"mean": torch.zeros(2)}),
        ("format", "mine"),
        ("by_tuple_key", {(1, 2): 3}),
    ])
    src, st, back = tmp_path / "m.pt", tmp_path / "m.safetensors", tmp_path / "back.pt"
    torch.save(ckpt, src)
    p = run("convert", src, st, "--json", check=0)
    report = json.loads(p.stdout)
    assert report["record"] == "model"
    assert report["records"] == ["epoch", "model_config", "hyper_parameters", "save_dir"]
    left = report["records_left_out"]
    assert sorted(left) == ["by_tuple_key", "format", "nan", "stats"]
    assert "tensor" in left["stats"] and "nan" in left["nan"]
    assert "taken" in left["format"] and "key" in left["by_tuple_key"]
    assert report["records_json_changes"] == {"model_config": "int keys become strings, tuples become lists",
                                              "hyper_parameters": "tuples become lists",
                                              "save_dir": "pathlib.PosixPath -> str"}
    meta = metadata(st)
    assert meta["format"] == "pt"  # the record named format does not replace it
    for name in report["records"]:
        assert json.loads(meta[name]) == python_json(ckpt[name]), name
    # exact floats and big ints survive
    assert json.loads(meta["hyper_parameters"])["tiny"] == 5e-324
    assert json.loads(meta["model_config"])["big"] == 2 ** 80

    run("convert", st, back, check=0)
    loaded = torch.load(back, weights_only=True)
    assert list(loaded) == ["epoch", "model", "model_config", "hyper_parameters", "save_dir"]
    for name in report["records"]:
        assert loaded[name] == python_json(ckpt[name]), name
    for k, v in net.state_dict().items():
        assert torch.equal(bits(loaded["model"][k]), bits(v)), k
    # the text summary names them too
    text = run("convert", src, tmp_path / "t.safetensors", check=0).stdout
    assert "records in __metadata__ (as JSON): epoch, model_config, hyper_parameters, save_dir" in text
    assert "records not carried: " in text and "stats (" in text
    assert "save_dir: pathlib.PosixPath -> str in JSON" in text


def test_files_without_records_are_written_and_read_as_before(tmp_path):
    # a safetensors file with metadata of its own but no ckpt.records converts to the bare state dict
    sd = collections.OrderedDict([("a", torch.arange(6.0).reshape(2, 3)), ("b", torch.ones(2, dtype=torch.int16))])
    st, back = tmp_path / "x.safetensors", tmp_path / "x.pt"
    save_file(sd, st, metadata={"format": "pt", "epoch": "5", "model_config": "{}"})
    run("convert", st, back, check=0)
    loaded = torch.load(back, weights_only=True)
    assert type(loaded) is collections.OrderedDict and list(loaded) == ["a", "b"]
    # a checkpoint whose records are all training state or whose weights are the whole file: save_file's bytes
    src, ours, ref = tmp_path / "sd.pt", tmp_path / "ours.safetensors", tmp_path / "ref.safetensors"
    torch.save({"model": sd, "optimizer": None}, src)
    run("convert", src, ours, check=0)
    save_file(sd, ref, metadata={"format": "pt"})
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("bad", [{"ckpt.records": "not json", "ckpt.weights": "model"},
                                 {"ckpt.records": '["epoch","model"]'},
                                 {"ckpt.records": '["epoch","model"]', "ckpt.weights": "model"},
                                 {"ckpt.records": '["epoch","model"]', "ckpt.weights": "model", "epoch": "{oops"}])
def test_malformed_record_entries_are_refused_naming_them(tmp_path, bad):
    st, back = tmp_path / "x.safetensors", tmp_path / "x.pt"
    save_file({"a": torch.ones(2)}, st, metadata={"format": "pt", **bad})
    p = run("convert", st, back)
    assert_clean_failure(p, st)
    assert "__metadata__" in p.stderr and not back.exists()


def test_weights_inside_a_record_carry_no_record_and_say_so(tmp_path):
    path = FW / "fairseq.pt"
    original = torch.load(path, weights_only=False)
    st = tmp_path / "ema.safetensors"
    report = run_json("convert", path, st, "--record", "extra_state.ema")
    assert report["records"] == [] and list(report["records_left_out"]) == list(original)
    assert all("not a top-level record" in why for why in report["records_left_out"].values())
    assert "ckpt.records" not in metadata(st)
