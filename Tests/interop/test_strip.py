"""ckpt strip against torch: what torch.load gives back for every fixture and option."""
import hashlib
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.serialization import config

import viewlib
from viewlib import bits
from conftest import FIXTURES, ROOT, assert_clean_failure, fixture_files, run, run_json

TRAINING_STATE = ["optimizer", "ema", "updates", "scaler", "optimizer_state_dict", "scheduler", "lr_scheduler",
                  "amp", "message_hub"]
EMA = ["ema", "state_dict_ema", "model_ema", "ema_state_dict"]
TO_HALF = (torch.float32, torch.float64, torch.bfloat16)


def load(path, mode="default", weights_only=False):
    """torch.load under one of the three settings the output must survive."""
    old_env = os.environ.get("TORCH_SERIALIZATION_DEBUG")
    old = config.load.calculate_storage_offsets
    try:
        if mode == "calculate_storage_offsets":
            os.environ["TORCH_SERIALIZATION_DEBUG"] = "1"  # torch asserts its computed offsets are the real ones
            config.load.calculate_storage_offsets = True
        return torch.load(path, weights_only=weights_only, mmap=(mode != "default"))
    finally:
        config.load.calculate_storage_offsets = old
        if old_env is None:
            os.environ.pop("TORCH_SERIALIZATION_DEBUG", None)
        else:
            os.environ["TORCH_SERIALIZATION_DEBUG"] = old_env


def same_tensor(a, b, where):
    viewlib.same_tensor(a, b, where, requires_grad=True)


def same_value(a, b, where="", half=False):
    """Deep comparison: tensors bit for bit (after .half() when asked), modules by class and state_dict."""
    if torch.is_tensor(a):
        if half and a.dtype in TO_HALF:
            want = a.detach().half()
            assert b.dtype == torch.float16, f"{where}: not float16"
            assert bits(want) == bits(b), f"{where}: values differ from torch's .half()"
            return
        same_tensor(a, b, where)
    elif isinstance(a, nn.Module):
        assert type(a) is type(b), where
        sa, sb = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
        assert list(sa) == list(sb), f"{where}: state_dict keys differ"
        for k in sa:
            same_value(sa[k], sb[k], f"{where}.{k}", half)
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b), f"{where}: dict keys {list(b)} != {list(a)}"
        for k in a:
            same_value(a[k], b[k], f"{where}.{k}", half)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_value(x, y, f"{where}.{i}", half)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert type(a) is type(b) and a == b, f"{where}: {b!r} != {a!r}"


def sharing_groups(obj):
    """Sets of tensor paths that share one storage, as torch sees it."""
    groups = {}

    def walk(x, path):
        if torch.is_tensor(x):
            groups.setdefault(x.untyped_storage().data_ptr(), []).append(path)
        elif isinstance(x, nn.Module):
            for k, v in x.state_dict(keep_vars=True).items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}.{i}")

    walk(obj, "")
    return sorted(sorted(g) for g in groups.values() if len(g) > 1 and all(groups))


def ultralytics_default_cfg_keys():
    """DEFAULT_CFG_KEYS of every Ultralytics release whose wheel scripts/setup downloads (ultralytics/cfg/default.yaml),
    united: the keys ckpt's Ultralytics convention keeps of train_args."""
    import glob, re, zipfile
    wheels = glob.glob(str(ROOT / ".venv" / "ultralytics-wheels" / "ultralytics-*.whl"))
    assert wheels, "scripts/setup downloads Ultralytics' wheels into .venv/ultralytics-wheels"
    keys = set()
    for w in wheels:
        text = zipfile.ZipFile(w).read("ultralytics/cfg/default.yaml").decode()
        keys |= {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_]+):", text, re.M)}
    return keys


def expected_strip(x, use_ema=False):
    """The strip semantics, applied by torch to the loaded source: the framework's own strip or publish script where
    the file is one of a framework's (ultralytics/utils/torch_utils.py strip_optimizer without its .half() and metadata
    refresh; mmdetection tools/model_converters/publish_model.py), else the generic conventions."""
    if not isinstance(x, dict) or all(torch.is_tensor(v) for v in x.values()):
        return x
    x = dict(x) if type(x) is dict else x.copy()
    if "train_args" in x and type(x.get("ema")).__module__.startswith("ultralytics."):
        if x.get("ema"):
            x["model"] = x["ema"]
        if hasattr(x["model"], "args"):
            x["model"].args = dict(x["model"].args)
        if hasattr(x["model"], "criterion"):
            x["model"].criterion = None
        for k in "optimizer", "best_fitness", "stopper", "ema", "updates", "scaler":
            if k in x:
                x[k] = None
        x["epoch"] = -1
        keys = ultralytics_default_cfg_keys()
        x["train_args"] = {k: v for k, v in x["train_args"].items() if k in keys}
        return x
    if "meta" in x and "message_hub" in x:
        return {k: v for k, v in x.items() if k in ("meta", "state_dict")}
    model_none = "model" in x and x["model"] is None
    ema_name = next((n for n in EMA if x.get(n) is not None), None)
    if ema_name and (use_ema or model_none):
        target = "model" if "model" in x else ("state_dict" if "state_dict" in x else None)
        if target:
            x[target] = x[ema_name]
    for k in TRAINING_STATE:
        if k in x and x[k] is not None:
            x[k] = None
    if isinstance(x.get("epoch"), int):
        x["epoch"] = -1
    return x


def stripped(tmp, src, *opts, name="out.pt"):
    out = tmp / name
    run("strip", src, out, *opts, check=0)
    return out


OPTIONS = [[], ["--half"], ["--use-ema"], ["--use-ema", "--half"]]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: " ".join(o) or "plain")
@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_strip_output_is_what_torch_expects(tmp, path, opts):
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = stripped(tmp, path, *opts)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "input was modified"
    src = torch.load(path, weights_only=False)
    want = expected_strip(src, use_ema="--use-ema" in opts)
    for mode in ("default", "mmap", "calculate_storage_offsets"):
        got = load(out, mode)
        same_value(want, got, "", half="--half" in opts)
    if "--half" not in opts:
        assert sharing_groups(want) == sharing_groups(load(out)), "storage sharing changed"
    # every output passes ckpt keys
    run("keys", out, "--json", check=0)


def test_yolov5_strip_optimizer_semantics(tmp):
    """YOLOv5's utils.general.strip_optimizer, applied by torch, gives the same tensors as strip --use-ema --half."""
    path = FIXTURES / "yolov5s-train.pt"
    x = torch.load(path, weights_only=False)
    if x.get("ema"):
        x["model"] = x["ema"]
    for k in "optimizer", "best_fitness", "ema", "updates":
        x[k] = None
    x["epoch"] = -1
    x["model"].half()
    for p in x["model"].parameters():
        p.requires_grad = False
    got = load(stripped(tmp, path, "--use-ema", "--half"))
    sa, sb = x["model"].state_dict(keep_vars=True), got["model"].state_dict(keep_vars=True)
    assert list(sa) == list(sb)
    for k in sa:
        same_tensor(sa[k], sb[k], k)
    assert got["epoch"] == -1 and got["optimizer"] is None and got["ema"] is None and got["updates"] is None
    # the model still runs, as YOLOv5's loaders would use it
    got["model"].float().eval()(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("path", [p for p in fixture_files() if p.name not in ("dtypes.pt",)], ids=lambda p: p.name)
def test_state_dict_output_loads_weights_only(tmp, path):
    out = stripped(tmp, path, "--state-dict")
    got = load(out, weights_only=True)
    src = torch.load(path, weights_only=False)
    want = expected_strip(src)
    rec = next((k for k in ("model", "ema", "state_dict") if isinstance(want, dict) and want.get(k) is not None), None)
    weights = want[rec] if rec else want
    weights = weights.state_dict() if isinstance(weights, nn.Module) else weights
    gw = got[rec] if rec else got
    assert list(gw) == list(weights)
    for k in weights:
        a, b = weights[k].detach(), gw[k]
        assert a.dtype == b.dtype and a.shape == b.shape and bits(a) == bits(b), k
        assert not isinstance(b, nn.Parameter)


def test_ultralytics_model_none_takes_the_ema(tmp):
    path = FIXTURES / "ultralytics-train.pt"
    p = run("strip", path, tmp / "u.pt")
    assert p.returncode == 0
    assert "ema" in p.stderr  # says that the EMA became the model
    got = load(tmp / "u.pt")
    src = torch.load(path, weights_only=False)
    assert got["ema"] is None and got["model"] is not None
    assert got["train_args"] == expected_strip(src)["train_args"]
    assert "save_dir" in src["train_args"] and "save_dir" not in got["train_args"]  # not a default-config key
    assert type(got["model"].args) is dict and got["model"].args == dict(src["ema"].args)
    same_value(src["ema"], got["model"], "model")


def test_stripping_a_stripped_file_changes_nothing(tmp):
    for path in (FIXTURES / "yolov5s-train.pt", FIXTURES / "dtypes.pt", FIXTURES / "mmlab-style.pt"):
        (tmp / "a").mkdir(exist_ok=True)
        (tmp / "b").mkdir(exist_ok=True)
        once = stripped(tmp / "a", path, "--half", name="w.pt")
        twice = stripped(tmp / "b", once, "--half", name="w.pt")
        same_value(load(once), load(twice))
        assert once.read_bytes() == twice.read_bytes(), f"{path.name}: second strip rewrote the file differently"


def test_summary_line_in_yolov5_manner(tmp):
    path = FIXTURES / "yolov5s-train.pt"
    out = tmp / "best.pt"
    text = run("strip", path, out, check=0).stdout.splitlines()[0]
    model = torch.load(path, weights_only=False)["model"]
    n = sum(p.numel() for p in model.parameters())
    assert text.startswith(f"stripped {path}: ")
    assert f"{os.path.getsize(path) / 1e6:.1f} MB -> " in text
    assert f"(model: {n / 1e3:.1f}K parameters, float16)" in text


def test_json_and_dry_run(tmp):
    path = FIXTURES / "yolov5s-train.pt"
    out = tmp / "x.pt"
    s = run_json("strip", path, out, "--dry-run")
    assert not out.exists()
    assert s["dry_run"] is True and s["records"]["epoch"] == {"before": "5", "after": "-1"}
    assert set(s["records"]) == {"epoch", "optimizer", "ema", "updates"}
    s = run_json("strip", path, out)
    assert s["output_bytes"] == os.path.getsize(out)


def test_in_place_strip(tmp):
    p = tmp / "best.pt"
    shutil.copy(FIXTURES / "yolov5s-train.pt", p)
    run("strip", p, p, check=0)
    got = load(p)
    assert got["optimizer"] is None and got["epoch"] == -1
    assert [f for f in os.listdir(tmp)] == ["best.pt"], "temp files left behind"


# --drop, --rename, --rename-regex

def test_drop_prefix_from_module_object(tmp):
    path = FIXTURES / "yolov5s-train.pt"
    out = stripped(tmp, path, "--drop", "model.24.")
    got = load(out)["model"].state_dict()
    src = torch.load(path, weights_only=False)["model"].state_dict()
    assert list(got) == [k for k in src if not k.startswith("model.24.")]
    assert [k["name"] for k in run_json("keys", out)] == list(got)


def test_drop_glob_from_state_dict(tmp):
    path = FIXTURES / "resnet-sd.pt"
    out = stripped(tmp, path, "--drop", "*.num_batches_tracked", "--drop", "fc")
    got = load(out, weights_only=True)
    src = torch.load(path)
    assert list(got) == [k for k in src if not k.endswith(".num_batches_tracked") and not k.startswith("fc.")]


def test_rename_prefix_ddp(tmp):
    path = FIXTURES / "sd-with-module-prefix.pt"
    out = stripped(tmp, path, "--rename", "module.=")
    got = load(out, weights_only=True)
    src = torch.load(path)
    assert list(got) == [k.removeprefix("module.") for k in src]
    for k, v in src.items():
        same_tensor(v, got[k.removeprefix("module.")], k)


def test_rename_nested_state_dict_and_regex(tmp):
    path = FIXTURES / "resnet-nested.pt"
    out = stripped(tmp, path, "--rename", "module.=", "--rename-regex", r"^layer(\d)\.=stage$1.")
    got = load(out)["state_dict"]
    src = torch.load(path)["state_dict"]
    import re
    want = [re.sub(r"^layer(\d)\.", r"stage\1.", k.removeprefix("module.")) for k in src]
    assert list(got) == want


def test_rename_collision_is_refused_and_writes_nothing(tmp):
    path = FIXTURES / "resnet-sd.pt"
    out = tmp / "o.pt"
    r = run("strip", path, out, "--rename-regex", r"^layer\d\.=layer.")
    assert_clean_failure(r, path)
    assert "both" in r.stderr
    assert not out.exists()


def test_pattern_matching_nothing_warns(tmp):
    r = run("strip", FIXTURES / "resnet-sd.pt", tmp / "o.pt", "--drop", "nothing.here.")
    assert r.returncode == 0 and "matches no key" in r.stderr


def test_dropping_everything_needs_force(tmp):
    out = tmp / "o.pt"
    r = run("strip", FIXTURES / "resnet-sd.pt", out, "--drop", "*")
    assert_clean_failure(r)
    assert "--force" in r.stderr and not out.exists()
    run("strip", FIXTURES / "resnet-sd.pt", out, "--drop", "*", "--force", check=0)
    assert len(load(out)) == 0


def test_renaming_a_module_object_needs_state_dict(tmp):
    r = run("strip", FIXTURES / "yolov5s-train.pt", tmp / "o.pt", "--rename", "model.=m.")
    assert_clean_failure(r)
    out = stripped(tmp, FIXTURES / "yolov5s-train.pt", "--state-dict", "--rename", "model.=m.")
    got = load(out, weights_only=True)["model"]
    assert all(k.startswith("m.") for k in got)


# Shape checks: a failed check names the tensor and writes nothing.

def corrupt(tmp, name, mutate):
    """Saves a state dict whose tensor 'bad' torch would refuse or misread, by editing the pickle."""
    import zipfile
    sd = {"good": torch.arange(6.0), "bad": torch.arange(12.0).reshape(3, 4)}
    src = tmp / "src.pt"
    torch.save(sd, src)
    dst = tmp / name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = mutate(data)
            zout.writestr(info.filename, data)
    return dst


@pytest.mark.parametrize("name,mutate,phrase", [
    # shape (3, 4) -> (3, 9): reaches past the 12-element storage
    ("past-storage.pt", lambda d: d.replace(b"K\x03K\x04\x86", b"K\x03K\x09\x86", 1), "reaches"),
    # stride (4, 1) -> (4, 255)
    ("big-stride.pt", lambda d: d.replace(b"K\x04K\x01\x86", b"K\x04K\xff\x86", 1), "reaches"),
    # storage numel 12 -> 13: the record holds 48 bytes, not 52
    ("numel-mismatch.pt", lambda d: d.replace(b"K\x0ct", b"K\x0dt", 1), "record holds"),
])
def test_failed_shape_check_names_the_tensor(tmp, name, mutate, phrase):
    bad = corrupt(tmp, name, mutate)
    out = tmp / "o.pt"
    r = run("strip", bad, out)
    assert_clean_failure(r, bad)
    assert phrase in r.stderr
    assert "bad" in r.stderr or "storage" in r.stderr
    assert not out.exists() and not [f for f in os.listdir(tmp) if "ckpt-tmp" in f]
