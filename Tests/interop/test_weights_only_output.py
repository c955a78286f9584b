"""`ckpt strip --state-dict` and `ckpt convert` to .pt write files that real torch.load(weights_only=True) loads: every
value it would refuse becomes plain data by the table in README (strip), compared here with Python's own conversion
(plainlib.python_plain: str(path), vars(ns), OmegaConf.to_container, arr.tolist(), e.value, isoformat()); tensors stay
bit-identical; a value nobody can convert fails the command naming its path, with nothing written, unless
--drop-unconvertible."""
import argparse
import collections
import datetime
import functools
import json
import pathlib
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT, assert_clean_failure, run, weights_only_loads
from plainlib import python_model_config, python_plain, same_plain

sys.path.insert(0, str(ROOT / "scripts"))
import torchvision_ops  # noqa: E402

torchvision_ops.declare()  # the framework fixtures' classes import torchvision (PyPI's CUDA build)
pytestmark = pytest.mark.filterwarnings("ignore")

import plainvalues as pv  # noqa: E402  (scripts/fixturelib, on sys.path via conftest)
from ultralytics.utils import IterableSimpleNamespace  # noqa: E402  (the fixturelib stand-in)


def tiny_state_dict():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).state_dict()


def every_kind():
    """One value of each kind of the table, made by the real classes."""
    from mmengine.logging.history_buffer import HistoryBuffer

    history = HistoryBuffer()
    history.update(1.5)
    history.update(2.0, 3)
    tz = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    odd_tz = datetime.timezone(-datetime.timedelta(hours=3, seconds=7, microseconds=12), "odd")
    return {
        "model": tiny_state_dict(),
        # pathlib
        "posix": pathlib.PosixPath("/data/runs/exp3"),
        "relative": pathlib.PurePosixPath("a/./b//c/.."),
        "two_slashes": pathlib.PurePosixPath("//host/x"),
        "windows": pathlib.PureWindowsPath("C:/Users/me/data"),
        "unc": pathlib.PureWindowsPath("//server/share/x"),
        "drive_relative": pathlib.PureWindowsPath("d:notes.txt"),
        # namespaces
        "args": argparse.Namespace(lr=0.1, name="exp", save_dir=pathlib.PosixPath("runs/exp"), layers=[1, 2]),
        "simple": types.SimpleNamespace(a=1, inner=types.SimpleNamespace(b=[1, 2])),
        "ultralytics_args": IterableSimpleNamespace(imgsz=640, model="yolov8n.yaml"),
        # numpy
        "f64": np.float64(0.37120000000000003),
        "f32": np.float32(0.1),
        "f16": np.float16(1.5),
        "i32": np.int32(-7),
        "u64": np.uint64(2**64 - 1),
        "u8": np.uint8(255),
        "flag": np.bool_(True),
        "text": np.str_("hé!"),
        "raw": np.bytes_(b"ab"),
        "cplx": np.complex128(1 + 2j),
        "matrix": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
        "big_endian": np.arange(3, dtype=">i4"),
        "bools": np.array([True, False]),
        "scalar_array": np.array(3.25),
        "objects": np.array([1, "a", None, pathlib.PosixPath("p")], dtype=object),
        "strings": np.array(["x", "yz"]),
        "one": np.array([0.5]),
        # enums
        "color": pv.Color.GREEN,
        "pair": pv.Color.PAIR,
        "level": pv.Level.HIGH,
        "colors": [pv.Color.RED, pv.Level.LOW],
        # datetime
        "when": datetime.datetime(2024, 5, 1, 12, 34, 56, 789012),
        "when_tz": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=tz),
        "when_utc": datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc),
        "when_odd": datetime.datetime(2000, 1, 2, 3, 4, 5, 6, tzinfo=odd_tz),
        "day": datetime.date(2024, 2, 29),
        "clock": datetime.time(7, 8, 9),
        "clock_us": datetime.time(7, 8, 9, 10, tzinfo=tz),
        # sets
        "tags": {"a", "b"},
        "frozen": frozenset({1, 2}),
        # dict types
        "counts": collections.defaultdict(int, {"a": 1, "b": 2}),
        "ordered": collections.OrderedDict([("x", pathlib.PosixPath("y"))]),
        "tagged": pv.Tagged(k=1),
        # objects with plain state
        "run": pv.RunInfo("exp", 3, extra={"when": datetime.date(2024, 1, 1)}),
        "slotted": pv.Slotted(1, "two"),
        "history": history,
        # references
        "run_class": pv.RunInfo,
        "schedule_fn": pv.schedule,
        "builtin_class": dict,
        # bytes
        "empty_bytes": b"",
        "some_bytes": b"\x00\xff",
        "shared": [pathlib.PosixPath("same")] * 2,
    }


def save(tmp_path, obj, name="in.pt", **kw):
    p = tmp_path / name
    torch.save(obj, p, **kw)
    return p


def strip_state_dict(src, out, *opts, check=0):
    p = run("strip", src, out, "--state-dict", "--json", *opts, check=check)
    return json.loads(p.stdout) if check == 0 else p


def refused_by_weights_only(value, tmp_path):
    """torch's own verdict on one value alone."""
    return not weights_only_loads(save(tmp_path, {"v": value}, name="one.pt"))


def listed(conversions, key):
    return [c for c in conversions if c["path"] == key or c["path"].startswith(key + ".")]


def test_every_kind_loads_weights_only_as_python_converts_it(tmp_path):
    x = every_kind()
    src = save(tmp_path, x)
    assert not weights_only_loads(src)
    out = tmp_path / "out.pt"
    # an enum member is its class called with the value: ckpt scan calls that dangerous, so --allow-unsafe
    assert run("strip", src, out, "--state-dict").returncode == 1
    summary = strip_state_dict(src, out, "--allow-unsafe")
    got = torch.load(out, weights_only=True)
    same_plain(python_plain(torch.load(src, weights_only=False)), got)
    # every value torch refuses is listed under its path, and nothing torch loads is
    for k, v in x.items():
        refused = refused_by_weights_only(v, tmp_path)
        assert bool(listed(summary["conversions"], k)) == refused, (k, listed(summary["conversions"], k))
    assert summary["dropped_values"] == []
    by_path = {c["path"]: c for c in summary["conversions"]}
    assert by_path["posix"]["from"] == "pathlib.PosixPath" and by_path["posix"]["to"] == "str"
    assert by_path["args"]["from"] == "argparse.Namespace" and by_path["args"]["to"] == "dict"
    assert by_path["args.save_dir"]["from"] == "pathlib.PosixPath"
    assert by_path["run"]["from"] == "plainvalues.RunInfo"
    # the text summary lists the first 12, one line each, and counts the rest (--json lists every one)
    text = run("strip", src, tmp_path / "out2.pt", "--state-dict", "--allow-unsafe", check=0).stdout
    for c in summary["conversions"][:12]:
        assert f"  converted {c['path']}: {c['from']} -> {c['to']}" in text
    rest = summary["conversions"][12:]
    assert len(rest) > 0 and f"  converted {len(rest)} more (" in text
    assert not any(f"  converted {c['path']}: " in text for c in rest)


def test_shared_value_stays_shared(tmp_path):
    src = save(tmp_path, {"model": tiny_state_dict(), "a": [pathlib.PosixPath("p")] * 2})
    out = tmp_path / "out.pt"
    strip_state_dict(src, out)
    got = torch.load(out, weights_only=True)["a"]
    assert got == ["p", "p"] and got[0] is got[1]


def test_pathlib_as_python_3_13_pickles_it(tmp_path):
    """Python 3.13 pickles the arguments the path was made from (`_raw_paths`), under `pathlib._local` (cpython
    gh-112855, gh-133789); ckpt joins and normalises them as pathlib does."""
    cases = {
        "joined": (pathlib.PurePosixPath, ("/a//b/./c/..", "d/", "e")),
        "reset": (pathlib.PurePosixPath, ("a", "/b", "c")),
        "empty": (pathlib.PurePosixPath, ()),
        "dot": (pathlib.PurePosixPath, ("./", ".")),
        "win_join": (pathlib.PureWindowsPath, ("C:\\Users", "me/x", "..\\y")),
        "win_drive_reset": (pathlib.PureWindowsPath, ("C:\\a", "D:b")),
        "win_root": (pathlib.PureWindowsPath, ("C:\\a", "\\b")),
        "win_unc": (pathlib.PureWindowsPath, ("\\\\srv\\share", "x")),
    }

    class Raw:
        def __init__(self, cls, args):
            self.cls, self.args = cls, args

    local = types.ModuleType("pathlib._local")
    fakes = {}
    for cls in (pathlib.PurePosixPath, pathlib.PureWindowsPath):
        fakes[cls] = type(cls.__name__, (), {"__module__": "pathlib._local"})
        setattr(local, cls.__name__, fakes[cls])

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            return (fakes[obj.cls], obj.args) if isinstance(obj, Raw) else NotImplemented

    pickle_module = types.ModuleType("pickle313")
    pickle_module.Pickler = Pickler
    sys.modules["pathlib._local"] = local
    try:
        src = save(tmp_path, {"model": tiny_state_dict(), **{k: Raw(c, a) for k, (c, a) in cases.items()}},
                   pickle_module=pickle_module)
    finally:
        del sys.modules["pathlib._local"]
    out = tmp_path / "out.pt"
    summary = strip_state_dict(src, out)
    got = torch.load(out, weights_only=True)
    for k, (cls, args) in cases.items():
        assert got[k] == str(cls(*args)), k
    assert {c["path"]: c["from"] for c in summary["conversions"]}["joined"] == "pathlib._local.PurePosixPath"


def test_omegaconf_lightning_hparams(tmp_path):
    """A Lightning checkpoint whose hyper-parameters are an omegaconf DictConfig (and hparams_type its class, as
    Lightning's _dump_checkpoint saves them): OmegaConf.to_container(cfg) and the class's name."""
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({
        "model": {"depth": 3, "width": 1.5, "act": "relu", "dropout": None},
        "data": {"root": "/data", "splits": ["train", {"name": "val", "frac": 0.1}], "copy": "${data.root}"},
        "required": "???",
        "flags": [True, False],
        "empty": {},
        "nothing": [],
        "int_keys": {1: "one", 2: "two"},
    })
    cfg.optim = omegaconf.OmegaConf.structured(pv.Optim)
    cfg.listed = omegaconf.ListConfig([1, "${model.depth}", [2, 3]])
    ckpt = {"state_dict": tiny_state_dict(), "hyper_parameters": cfg, "hparams_type": type(cfg), "epoch": 1,
            "global_step": 4, "pytorch-lightning_version": "2.6.6", "loops": {}, "callbacks": {}}
    src = save(tmp_path, ckpt)
    out = tmp_path / "out.pt"
    summary = strip_state_dict(src, out)
    assert summary["framework"] == "lightning"
    got = torch.load(out, weights_only=True)
    same_plain(omegaconf.OmegaConf.to_container(cfg, resolve=False), got["hyper_parameters"])
    assert got["hparams_type"] == "omegaconf.dictconfig.DictConfig"
    same_plain(ckpt["state_dict"], got["state_dict"])
    assert {c["path"]: (c["from"], c["to"]) for c in summary["conversions"]} == {
        "hyper_parameters": ("omegaconf.dictconfig.DictConfig", "dict"),
        "hparams_type": ("omegaconf.dictconfig.DictConfig (a reference)", "str"),
    }


def test_yolov5_opt_with_posix_paths(tmp_path):
    """YOLOv5's train.py saves vars(opt), which holds PosixPaths (evolve_population, save_dir): the output of strip
    --state-dict loads with weights_only=True, the paths as str(path), the model as its state_dict()."""
    x = torch.load(FIXTURES / "yolov5s-train.pt", weights_only=False)
    x["opt"].update(evolve_population=pathlib.PosixPath("data/hyps"), save_dir=pathlib.PosixPath("runs/train/exp"))
    src = save(tmp_path, x)
    out = tmp_path / "out.pt"
    summary = strip_state_dict(src, out)
    got = torch.load(out, weights_only=True)
    assert got["opt"]["evolve_population"] == "data/hyps" and got["opt"]["save_dir"] == "runs/train/exp"
    same_plain(python_plain(x["opt"]), got["opt"])
    same_plain(python_plain(x["best_fitness"]), got["best_fitness"])  # torch.from_numpy: a (1,) float64 tensor
    same_plain(x["model"].state_dict(), got["model"])
    assert {"path": "opt.evolve_population", "from": "pathlib.PosixPath", "to": "str"} in summary["conversions"]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.pt")) + sorted((FIXTURES / "frameworks").glob("*.pt")),
                         ids=lambda p: p.name)
def test_every_fixture_state_dict_loads_weights_only(tmp_path, path):
    """Every fixture stripped with --state-dict loads with weights_only=True, and is what strip without it writes,
    converted by Python (modules as their state_dict())."""
    plain_out, objects_out = tmp_path / "plain.pt", tmp_path / "objects.pt"
    summary = strip_state_dict(path, plain_out)
    got = torch.load(plain_out, weights_only=True)
    run("strip", path, objects_out, check=0)
    objects = torch.load(objects_out, weights_only=False)
    want = python_plain(objects)
    # the weights module's description travels beside its state dict (a file that is the module has no place for it)
    record = summary["weights_record"]
    config = python_model_config(objects[record] if record else objects, record)
    if config is not None and isinstance(objects, dict):
        want["model_config"] = config
    same_plain(want, got)
    assert summary["dropped_values"] == []


def unconvertible(tmp_path):
    """Calls of a function with arguments (ckpt scan calls them dangerous: these tests pass --allow-unsafe)."""
    return save(tmp_path, {
        "model": tiny_state_dict(),
        "sched": functools.partial(pv.schedule, 2),
        "hooks": [1, pv.Opaque(3)],
        "ok": pathlib.PosixPath("x"),
    })


def test_unconvertible_value_fails_naming_it_and_writes_nothing(tmp_path):
    src = unconvertible(tmp_path)
    out = tmp_path / "out" / "o.pt"
    out.parent.mkdir()
    p = run("strip", src, out, "--state-dict", "--allow-unsafe")
    assert_clean_failure(p, src)
    assert "sched: functools.partial" in p.stderr and "hooks.1" in p.stderr and "--drop-unconvertible" in p.stderr
    assert list(out.parent.iterdir()) == []
    p = run("strip", src, out, "--state-dict", "--allow-unsafe", "--dry-run")
    assert_clean_failure(p, src)


def test_drop_unconvertible_drops_and_lists(tmp_path):
    src = unconvertible(tmp_path)
    out = tmp_path / "out.pt"
    summary = strip_state_dict(src, out, "--drop-unconvertible", "--allow-unsafe")
    got = torch.load(out, weights_only=True)
    assert "sched" not in got and got["hooks"] == [1, None] and got["ok"] == "x"
    same_plain(tiny_state_dict(), got["model"])
    assert [(d["path"], d["from"]) for d in summary["dropped_values"]] == [
        ("sched", "functools.partial"), ("hooks.1", "plainvalues.make_opaque")]
    text = run("strip", src, tmp_path / "o2.pt", "--state-dict", "--drop-unconvertible", "--allow-unsafe", check=0).stdout
    assert "  dropped sched: functools.partial" in text
    # without --state-dict nothing is made plain: the flag is refused
    p = run("strip", src, tmp_path / "o3.pt", "--drop-unconvertible", "--allow-unsafe")
    assert p.returncode == 2 and p.stderr.startswith("ckpt: ") and "applies to --state-dict" in p.stderr
    assert not (tmp_path / "o3.pt").exists()


def test_refusal_nobody_converts_fails_naming_path(tmp_path):
    """A tensor subclass (torch._tensor._rebuild_from_type_v2 of a class weights_only does not know): the command
    fails naming the value's path and class; nothing is written."""

    src = save(tmp_path, {"model": tiny_state_dict(), "special": torch.ones(2).as_subclass(pv.Marked)})
    assert not weights_only_loads(src)
    out = tmp_path / "out.pt"
    p = run("strip", src, out, "--state-dict")
    assert_clean_failure(p, src)
    assert "special: plainvalues.Marked" in p.stderr and "weights_only=True" in p.stderr
    assert not out.exists()


def test_convert_to_pt_makes_metadata_plain(tmp_path):
    """convert's .pt output keeps a state dict's _metadata; a value in it weights_only refuses is made plain."""
    sd = tiny_state_dict()
    sd._metadata[""]["source"] = pathlib.PosixPath("/weights/a.pt")
    src = save(tmp_path, sd)
    assert not weights_only_loads(src)
    out = tmp_path / "out.pt"
    report = json.loads(run("convert", src, out, "--json", check=0).stdout)
    got = torch.load(out, weights_only=True)
    same_plain(sd, got)
    assert got._metadata[""]["source"] == "/weights/a.pt"
    assert [(c["from"], c["to"]) for c in report["conversions"]] == [("pathlib.PosixPath", "str")]
    assert "converted" in run("convert", src, tmp_path / "o2.pt", check=0).stdout


def test_convert_to_pt_of_every_fixture_loads_weights_only(tmp_path):
    for path in sorted(FIXTURES.glob("*.pt")) + sorted((FIXTURES / "frameworks").glob("*.pt")):
        out = tmp_path / (path.stem + ".out.pt")
        run("convert", path, out, check=0)
        assert weights_only_loads(out), path.name
