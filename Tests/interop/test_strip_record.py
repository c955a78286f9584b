"""Issue 11, point 4: `strip --record R` names only the record --drop/--rename (and --state-dict) change, in the
output: it never turns off --use-ema, never empties a record, and a record that is not a weights record is refused.

Every combination of --record {none, model, ema, a non-weights record} x --use-ema x --state-dict on the YOLOv5 and
Ultralytics training checkpoints. The expected output is computed by torch from the loaded input (the EMA's
state_dict for --use-ema, and so on); every tensor of the output is compared, found by walking what torch.load
returns."""
import collections
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES, assert_clean_failure, run, run_json
from plainlib import python_description, python_plain
from viewlib import bits, tensor_walk

TRAINING_STATE = ["optimizer", "ema", "updates"]
FILES = {"yolov5s-train.pt": "opt", "ultralytics-train.pt": "train_args"}  # file -> a record that holds no weights
RECORDS = [None, "model", "ema", "other"]
CASES = list(itertools.product(FILES, RECORDS, [False, True], [False, True]))


def load(path, **kw):
    return torch.load(path, weights_only=False, **kw)


def expected(src, use_ema, state_dict):
    """What strip must write, computed by torch: the EMA becomes the model when asked or when the model is None,
    training state None, epoch -1; with --state-dict the model is its state_dict (plain tensors) and numpy values
    become tensors (torch.from_numpy), and the model's attributes are a `model_config` record."""
    x = dict(src)
    if use_ema or x["model"] is None:
        x["model"] = x["ema"]
    for k in TRAINING_STATE:
        x[k] = None
    x["epoch"] = -1
    if state_dict:
        x["model_config"] = python_description(x["model"])  # the module's description, beside its state dict
        x["model"] = collections.OrderedDict((k, v.detach()) for k, v in x["model"].state_dict(keep_vars=True).items())
        x = {k: (python_plain(v) if isinstance(v, np.ndarray) else v) for k, v in x.items()}  # torch.from_numpy
    return x


def case_id(c):
    f, rec, ema, sd = c
    return f"{f}-record={rec}-{'ema' if ema else 'noema'}-{'sd' if sd else 'module'}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_record_use_ema_state_dict(tmp_path, case):
    name, rec, use_ema, state_dict = case
    path = FIXTURES / name
    rec = FILES[name] if rec == "other" else rec
    out = tmp_path / "out.pt"
    args = ["strip", path, out] + (["--record", rec] if rec else []) + (["--use-ema"] if use_ema else []) \
        + (["--state-dict"] if state_dict else [])
    p = run(*args, "--json")
    if rec in ("ema", FILES[name]):
        # ema: strip sets it to None (its weights become the model with --use-ema); the other: no weights in it
        assert_clean_failure(p, path)
        assert f"--record {rec}" in p.stderr
        assert ("None" in p.stderr) if rec == "ema" else ("not a weights record" in p.stderr), p.stderr
        assert not out.exists() and list(tmp_path.iterdir()) == []
        return
    assert p.returncode == 0, p.stderr
    src = load(path)
    want = expected(src, use_ema, state_dict)
    got = torch.load(out, weights_only=state_dict) if state_dict else load(out)
    assert list(got) == list(want)
    if state_dict:
        assert got["model_config"] == want["model_config"]
    # exactly the expected tensors, everywhere in the file: path, dtype, shape, bits, Parameter-ness
    gw, ww = tensor_walk(got), tensor_walk(want)
    assert [n for n, _ in gw] == [n for n, _ in ww]
    for (n, a), (_, b) in zip(gw, ww):
        assert (a.dtype, a.shape, isinstance(a, nn.Parameter), a.requires_grad) == \
            (b.dtype, b.shape, isinstance(b, nn.Parameter), b.requires_grad), n
        assert bits(a) == bits(b), n
    weights = src["ema"] if (use_ema or src["model"] is None) else src["model"]
    sd = weights.state_dict(keep_vars=True)
    model = got["model"]
    if state_dict:
        assert type(model) is collections.OrderedDict and list(model) == list(sd)
    else:
        assert type(model) is type(weights) and list(model.state_dict()) == list(sd)
    # the summary names the weights and counts them as torch does
    import json
    s = json.loads(p.stdout)
    assert s["weights_record"] == "model"
    params = {id(v): v for v in sd.values() if isinstance(v, nn.Parameter)} if not state_dict else \
        {id(v): v for v in sd.values()}
    assert s["parameters"] == sum(v.numel() for v in params.values())


@pytest.mark.parametrize("name", FILES)
def test_record_drop_acts_on_the_promoted_weights(tmp_path, name):
    """--use-ema --record model --drop P: P leaves the EMA's weights, which are the model of the output."""
    path = FIXTURES / name
    src = load(path)
    prefix = "model.24." if name.startswith("yolov5") else "model.22."
    s = run_json("strip", path, tmp_path / "o.pt", "--use-ema", "--record", "model", "--drop", prefix)
    want = [k for k in src["ema"].state_dict() if k.startswith(prefix)]
    assert want and sorted(s["dropped"]) == sorted(want)
    got = load(tmp_path / "o.pt")
    left = list(got["model"].state_dict())
    assert left == [k for k in src["ema"].state_dict() if not k.startswith(prefix)]
    assert got["ema"] is None
    # the model record holds the EMA's tensors (YOLOv5's EMA parameters do not require grad)
    ema_sd = src["ema"].state_dict(keep_vars=True)
    for k, v in got["model"].state_dict(keep_vars=True).items():
        assert bits(v) == bits(ema_sd[k]) and v.requires_grad == ema_sd[k].requires_grad, k


def test_state_dict_record_opt_never_empties_it(tmp_path):
    """The issue's case: --state-dict --record opt turned a 43-entry dict into an empty state dict."""
    path = FIXTURES / "yolov5s-train.pt"
    p = run("strip", path, tmp_path / "o.pt", "--state-dict", "--record", "opt")
    assert_clean_failure(p, path)
    assert "'opt' is not a weights record" in p.stderr and not (tmp_path / "o.pt").exists()


def test_record_none_and_missing_are_refused(tmp_path):
    path = FIXTURES / "ultralytics-train.pt"
    for rec, says in (("optimizer", "training state"), ("nope", "no record 'nope'"), ("date", "not a weights record"),
                      ("train_metrics", "not a weights record")):
        p = run("strip", path, tmp_path / "o.pt", "--record", rec)
        assert_clean_failure(p, path)
        assert says in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []
