"""`ckpt scan --weights-only`: exit 0 exactly when real torch.load(weights_only=True) loads the file, 1 when it refuses
it, naming the first refusal, the refused value's path and class, and what `ckpt strip --state-dict` makes of it."""
import argparse
import collections
import datetime
import enum
import functools
import json
import pathlib
import types

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import FIXTURES, assert_clean_failure, run, weights_only_loads

FILES = sorted(FIXTURES.glob("*.pt")) + sorted((FIXTURES / "frameworks").glob("*.pt")) \
    + sorted(p for p in (FIXTURES / "legacy").iterdir() if p.is_file()) \
    + sorted((FIXTURES / "payloads").glob("*.pt")) + sorted((FIXTURES / "payloads" / "weights-only").glob("*.pt"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_exit_code_agrees_with_torch(path):
    p = run("scan", "--weights-only", path)
    if p.returncode == 2:
        assert_clean_failure(p, path)
        pytest.skip("ckpt cannot read it (not a checkpoint)")
    assert p.returncode == (0 if weights_only_loads(path) else 1), p.stdout + p.stderr
    if p.returncode == 1:
        assert "weights_only=True: refused" in p.stdout and "first refusal: " in p.stdout
        assert p.stderr.startswith(f"ckpt: {path}: torch.load(weights_only=True) would refuse it: ")
    else:
        assert "weights_only=True: loads" in p.stdout and p.stderr == ""


def torch_refusal(path):
    try:
        torch.load(path, weights_only=True)
    except Exception as e:  # torch's UnpicklingError names the global it refuses
        return str(e)
    return None


class Color(enum.Enum):
    RED = "red"


class Plain:
    def __init__(self):
        self.depth = 3
        self.name = "tiny"


SD = collections.OrderedDict([("0.weight", torch.arange(6.0).reshape(2, 3)), ("0.bias", torch.zeros(2))])

# value in the file, the path scan must name, its class, and the word of the conversion strip --state-dict applies
CASES = {
    "posixpath": ({"opt": {"weights": "yolov5s.pt", "save_dir": pathlib.PosixPath("runs/train/exp")}},
                  "opt.save_dir", "pathlib.PosixPath", "str"),
    "namespace": ({"args": argparse.Namespace(lr=0.1, epochs=3)}, "args", "argparse.Namespace", "dict"),
    "simplenamespace": ({"cfg": {"inner": [types.SimpleNamespace(a=1)]}}, "cfg.inner.0", "types.SimpleNamespace", "dict"),
    "omegaconf": ({"hyper_parameters": OmegaConf.create({"lr": 0.1, "layers": [1, 2]})}, "hyper_parameters",
                  "omegaconf.dictconfig.DictConfig", "dict"),
    "numpy-scalar": ({"best_fitness": np.float64(0.5)}, "best_fitness", "numpy.float64", "float"),
    "numpy-array": ({"meta": {"anchors": np.arange(4.0)}}, "meta.anchors", "numpy.ndarray", "tensor"),
    "enum": ({"meta": {"color": Color.RED}}, "meta.color", f"{__name__}.Color", "enum value"),
    "datetime": ({"date": datetime.datetime(2024, 5, 1, 12, 34, 56)}, "date", "datetime.datetime", "isoformat"),
    "plain-object": ({"extra": Plain()}, "extra", f"{__name__}.Plain", "__class__"),
    "class-reference": ({"hparams_type": argparse.Namespace}, "hparams_type", "argparse.Namespace", "str"),
    "partial": ({"fn": functools.partial(print, "x")}, "fn", "functools.partial", None),
}


@pytest.mark.parametrize("case", CASES)
def test_names_the_refused_value_its_path_and_the_conversion(tmp_path, case):
    extra, where, cls, conversion = CASES[case]
    path = tmp_path / f"{case}.pt"
    torch.save({"model": SD, **extra}, path)
    refusal = torch_refusal(path)
    assert refusal is not None  # torch refuses it, so scan must
    p = run("scan", "--weights-only", path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"value: {where}: {cls}" in p.stdout
    got = json.loads(run("scan", "--weights-only", path, "--json").stdout)
    assert got["loads"] is False and got["value"]["path"] == where and got["value"]["class"] == cls
    # torch's own message names the global scan names as the first refusal
    refused_global = got["reason"].split("global ")[1].split(" ")[0]
    assert refused_global in refusal or refused_global.replace("__builtin__", "builtins") in refusal, (refused_global, refusal)
    if conversion is None:
        assert got["value"]["convertible"] is False
        assert "not convertible: --drop-unconvertible drops it" in p.stdout
    else:
        assert got["value"]["convertible"] is True and conversion in got["value"]["conversion"]
        assert "ckpt strip --state-dict: converts it to " in p.stdout


def test_a_file_torch_loads_exits_0(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"model": SD, "epoch": 3, "names": {0: "a"}}, path)
    assert weights_only_loads(path)
    p = run("scan", "--weights-only", path, check=0)
    assert p.stdout.strip() == f"{path}: weights_only=True: loads"
    got = json.loads(run("scan", "--weights-only", path, "--json", check=0).stdout)
    assert got == {"file": str(path), "loads": True, "reason": None, "value": None}


def test_misuse_exits_2(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(SD, path)
    assert run("scan", "--weights-only", "--strict", path).returncode == 2
    assert_clean_failure(run("scan", "--weights-only", tmp_path), tmp_path)


def strip_converts_values():
    """Whether this ckpt's strip --state-dict makes refused values plain data (issue 14, point 2)."""
    return "--drop-unconvertible" in run("strip", "--help").stdout


@pytest.mark.parametrize("case", CASES)
def test_the_conversion_named_is_what_strip_state_dict_does(tmp_path, case):
    """scan --weights-only predicts strip --state-dict: a value it calls convertible is converted (listed at its path)
    and the output loads with real torch.load(weights_only=True); one it calls not convertible makes strip fail."""
    if not strip_converts_values():
        pytest.skip("strip --state-dict does not convert values in this build")
    extra, where, _, conversion = CASES[case]
    src, out = tmp_path / f"{case}.pt", tmp_path / "out.pt"
    torch.save({"model": SD, **extra}, src)
    got = json.loads(run("scan", "--weights-only", src, "--json").stdout)
    p = run("strip", "--state-dict", "--allow-unsafe", src, out, "--json")
    if got["value"]["convertible"]:
        assert p.returncode == 0, p.stderr
        assert where in [c["path"] for c in json.loads(p.stdout)["conversions"]]
        assert weights_only_loads(out)
    else:
        assert p.returncode != 0 and where in p.stderr and not out.exists()
