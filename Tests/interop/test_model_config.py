"""strip --state-dict keeps the model's description in a `model_config` record: the YOLOv5 and Ultralytics models
rebuild from the output alone (with the fixtures' stand-in classes, as a user with the repo checked out would) and
give the outputs the original file's model gives. The description is compared with the module's own attributes, and
what counts as torch's bookkeeping is what torch itself puts in a bare nn.Module's __dict__."""
import argparse
import pathlib

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES, run, run_json, weights_only_loads
from models.yolo import Model as YOLOv5Model  # YOLOv5 keeps `Model` as the name of its DetectionModel
from ultralytics.nn.tasks import DetectionModel as UltralyticsDetectionModel
from plainlib import python_description, same_plain

# fixture, the record the weights come from in the input, the class that rebuilds the model from its yaml
CASES = [
    ("yolov5s-train.pt", "model", YOLOv5Model),
    ("ultralytics-train.pt", "ema", UltralyticsDetectionModel),  # its `model` is None: strip makes the EMA the model
]


def stripped(tmp, path, *opts):
    out = tmp / "out.pt"
    run("strip", path, out, "--state-dict", *opts, check=0)
    return out


def forward(model, x):
    model = model.float().eval()
    with torch.no_grad():
        return model(x.clone())


def same_outputs(a, b, where="output"):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: values differ"
    else:
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_outputs(x, y, f"{where}[{i}]")


@pytest.mark.parametrize("name,record,cls", CASES, ids=[c[0] for c in CASES])
def test_model_rebuilds_from_the_description(tmp, name, record, cls):
    path = FIXTURES / name
    original = torch.load(path, weights_only=False)[record]
    out = stripped(tmp, path)
    assert weights_only_loads(out)
    ckpt = torch.load(out, weights_only=True)
    config = ckpt["model_config"]

    # the description is the module's own attributes
    assert config == python_description(original)
    assert config["names"] == original.names and config["nc"] == original.nc
    assert torch.equal(torch.tensor(config["stride"], dtype=original.stride.dtype), original.stride)

    # the model rebuilds from the description alone, with the output's weights
    rebuilt = cls(cfg=config["yaml"])
    rebuilt.load_state_dict(ckpt["model"])
    rebuilt.names = config["names"]
    assert torch.equal(rebuilt.stride, torch.tensor(config["stride"], dtype=rebuilt.stride.dtype))
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))  # a size neither model has cached
    same_outputs(forward(original, x), forward(rebuilt, x))


def test_summary_names_the_record_and_the_attributes(tmp):
    path = FIXTURES / "yolov5s-train.pt"
    s = run_json("strip", path, tmp / "o.pt", "--state-dict")
    change = s["records"]["model_config"]
    assert change["before"] == "(new)"
    original = torch.load(path, weights_only=False)["model"]
    for k in python_description(original):
        assert k in change["after"], k
    assert "stride (tensor as numbers)" in change["after"]
    # without --state-dict the module object keeps its attributes itself: no record is added
    s = run_json("strip", path, tmp / "p.pt")
    assert "model_config" not in s["records"]
    assert "model_config" not in torch.load(tmp / "p.pt", weights_only=False)


class Net(nn.Module):
    """A model whose attributes hold values weights_only refuses, a large tensor, tensors in a list and a module
    outside _modules."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.args = argparse.Namespace(lr=0.1, name="run", save_dir=pathlib.PosixPath("runs/exp"))
        self.save_dir = pathlib.PosixPath("runs/exp/weights")
        self.num_classes = np.int64(3)
        self.pretrained_cfg = {"url": "", "num_classes": 3, "mean": (0.485, 0.456, 0.406)}
        self.anchors = torch.arange(6, dtype=torch.int32).view(2, 3)
        self.flags = torch.tensor([True, False])
        self.big = torch.zeros(70000)
        self.grid = [torch.zeros(2), torch.ones(2)]
        self.__dict__["loss"] = nn.MSELoss()  # a module outside _modules


def test_values_are_made_plain_and_model_parts_left_out(tmp):
    src = tmp / "net.pt"
    net = Net()
    torch.save({"model": net, "epoch": 3}, src)
    assert not weights_only_loads(src)
    p = run("strip", src, tmp / "o.pt", "--state-dict", "--json", check=0)
    ckpt = torch.load(tmp / "o.pt", weights_only=True)
    config = ckpt["model_config"]
    for k in ("big", "grid", "loss"):  # a tensor too large, tensors in a list, a module: left out and said
        assert k not in config
        assert f"model.{k} left out" in p.stderr
    # values weights_only refuses, converted as Python converts them (str(path), vars(ns), x.item())
    assert config["args"] == {"lr": 0.1, "name": "run", "save_dir": str(net.args.save_dir)}
    assert config["save_dir"] == str(net.save_dir)
    assert config["anchors"] == net.anchors.tolist() and config["flags"] == net.flags.tolist()
    want = python_description(net)
    assert config == want
    assert list(config) == list(want) == [k for k in vars(net) if k not in ("body", "big", "grid", "loss")
                                          and k not in vars(nn.Module())]
    assert type(config["num_classes"]) is int
    assert list(ckpt["model"]) == list(net.state_dict())
    import json

    conversions = {c["path"]: c for c in json.loads(p.stdout)["conversions"]}
    for k in ("model_config.args", "model_config.save_dir", "model_config.num_classes", "model_config.args.save_dir"):
        assert k in conversions, (k, conversions)


def test_a_record_named_model_config_is_kept(tmp):
    src = tmp / "net.pt"
    torch.save({"model": Net(), "model_config": {"mine": 1}}, src)
    p = run("strip", src, tmp / "o.pt", "--state-dict", check=0)
    assert "model_config_2" in p.stderr
    ckpt = torch.load(tmp / "o.pt", weights_only=True)
    assert ckpt["model_config"] == {"mine": 1}
    assert ckpt["model_config_2"]["pretrained_cfg"] == Net().pretrained_cfg


def test_modules_inside_the_weights_record_are_described_by_path(tmp):
    src = tmp / "gan.pt"
    g, d = Net(), nn.Linear(2, 2)
    g.kind, d.kind = "generator", "discriminator"
    torch.save({"model": {"G": g, "D": d}}, src)
    run("strip", src, tmp / "o.pt", "--state-dict", check=0)
    ckpt = torch.load(tmp / "o.pt", weights_only=True)
    config = ckpt["model_config"]
    assert list(config) == ["model.G", "model.D"]
    assert config["model.D"] == python_description(d)
    assert config["model.G"]["kind"] == "generator"


@pytest.mark.parametrize("shape", ["module", "list"])
def test_a_file_that_is_the_module_says_the_description_is_not_kept(tmp, shape):
    src = tmp / "whole.pt"
    net = nn.Linear(3, 2)
    net.nc = 2
    torch.save(net if shape == "module" else [net, 3], src)
    p = run("strip", src, tmp / "o.pt", "--state-dict", check=0)
    assert "description is not kept" in p.stderr and "nc" in p.stderr
    got = torch.load(tmp / "o.pt", weights_only=True)
    if shape == "list":
        assert len(got) == 2 and got[1] == 3
        got = got[0]
    assert list(got) == list(net.state_dict())


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_tensor_attributes_are_what_tolist_gives(tmp, zip_format):
    m = nn.Linear(2, 2)
    m.stride = torch.tensor([8.0, 16.0, 32.0])
    m.view = torch.arange(12, dtype=torch.int64).view(3, 4)[:, 1::2]  # a strided view of a larger storage
    m.scalar = torch.tensor(3.5, dtype=torch.float16)
    m.flags = torch.tensor([[True], [False]])
    m.bf = torch.tensor([1.0, -2.5], dtype=torch.bfloat16)
    m.small = torch.tensor([-3, 250], dtype=torch.int16)
    m.c = torch.zeros(2, dtype=torch.complex64)  # no Python numbers: left out, and said
    src = tmp / "m.pt"
    torch.save({"model": m}, src, _use_new_zipfile_serialization=zip_format)
    p = run("strip", src, tmp / "o.pt", "--state-dict", check=0)
    assert "model.c left out" in p.stderr
    config = torch.load(tmp / "o.pt", weights_only=True)["model_config"]
    assert "c" not in config
    same_plain(python_description(m), config)  # types too: floats, ints, bools, nested as tolist() nests them
