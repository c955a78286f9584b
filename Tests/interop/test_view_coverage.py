"""Issue 11, points 1 and 5: every command knows how many tensors the pickle builds and how many its state_dict view
shows, says so when the view shows fewer, lists them all with `keys --all`, and never writes or reports less than it
says. `strip --state-dict` keeps the structure of nested weights. Oracle: torch.load of the same file (viewlib)."""
import collections
import json
import re

import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES, assert_clean_failure, fixture_files, run, run_json
from viewlib import bits, dtype_name, missing_count, tensor_walk, view_tensors

NOTE = re.compile(r"^note: (\d+) tensors are not in the state_dict view of '(.*)'; see --all$")


# Classes the files made here pickle by reference (this module is importable as `test_view_coverage`).
class Holder:
    """A custom container: neither a module nor a dict. Its tensors are in no state_dict view."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)


class TensorDict(dict):
    """A dict subclass: pickled as the class plus SETITEMS, not as a dict torch's view reads."""


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("mask", torch.ones(4), persistent=False)  # not in state_dict
        self.stride = torch.tensor([8.0, 16.0])  # a plain attribute, as YOLOv5's Detect.stride
        self.grid = [torch.zeros(2), torch.zeros(3)]  # a list of tensors, as Detect.grid


def made_files(d):
    """Files torch writes here, each holding tensors some view leaves out."""
    torch.manual_seed(0)
    net = Net()
    shared = torch.arange(6.0)
    files = {
        "list.pt": [torch.ones(2), shared, shared, torch.zeros(3, dtype=torch.int64)],
        "module-plus-extras.pt": {"model": net, "extra": torch.ones(5), "anchors": [torch.ones(2), torch.ones(3)],
                                  "epoch": 3},
        "holder.pt": {"model": Holder(weight=torch.randn(4, 3), bias=torch.randn(4), nested={"k": torch.ones(1)}),
                      "epoch": 1},
        "dict-subclass.pt": {"model": TensorDict(a=torch.ones(2), b=torch.zeros(2, 2))},
        "bare-module.pt": net,
        "tensor-key.pt": {"k": {torch.ones(3): "v", "w": torch.zeros(2)}, "epoch": 2},
    }
    for name, obj in files.items():
        torch.save(obj, d / name)
    return sorted(d / n for n in files)


def load(path):
    return torch.load(path, weights_only=False)


def notes(stderr):
    """The note lines of stderr: {record: count}; fails on any other line."""
    out = {}
    for line in stderr.splitlines():
        m = NOTE.match(line)
        assert m, f"unexpected stderr line {line!r}"
        out[m.group(2)] = int(m.group(1))
    return out


def records_of(obj):
    """The top-level records ckpt lists (a dict's string keys), or None when obj is not such a dict."""
    if isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()) and obj:
        return {str(k): v for k, v in obj.items()}
    return None


def all_files(tmp_path):
    return fixture_files() + made_files(tmp_path)


def test_keys_all_lists_every_tensor_torch_finds(tmp_path):
    """keys --all --record R: names, dtypes and shapes of every tensor torch finds in R, in order, each once."""
    checked = 0
    for path in all_files(tmp_path):
        obj = load(path)
        recs = records_of(obj)
        targets = [(r, v) for r, v in recs.items() if tensor_walk(v)] if recs else [(None, obj)]
        for rec, value in targets:
            args = ["keys", path, "--all"] + (["--record", rec] if rec else [])
            p = run(*args, "--json", check=0)
            assert p.stderr == "", p.stderr  # --all shows everything: nothing to note
            got = [(e["name"], e["dtype"], e["shape"]) for e in json.loads(p.stdout)]
            want = [(n or (rec or ""), dtype_name(t), list(t.shape)) for n, t in tensor_walk(value)]
            assert got == want, f"{path.name} {rec}"
            checked += 1
    assert checked > 20


def test_keys_all_filters(tmp_path):
    path = FIXTURES / "yolov5s-train.pt"
    walk = tensor_walk(load(path)["model"])
    got = [e["name"] for e in run_json("keys", path, "--all", "--prefix", "model.24.")]
    assert got == [n for n, _ in walk if n.startswith("model.24.")] and "model.24.stride" in got
    got = [e["name"] for e in run_json("keys", path, "--all", "--match", "*grid*")]
    assert got == [n for n, _ in walk if "grid" in n] and got


def test_notes_count_what_the_view_leaves_out(tmp_path):
    """keys and info say, on stderr, how many tensors each record holds outside its state_dict view, as torch
    counts them (id-distinct tensors found minus those of state_dict()); stdout is unchanged by the note."""
    seen_notes = 0
    for path in all_files(tmp_path):
        obj = load(path)
        recs = records_of(obj)
        targets = recs.items() if recs else [(None, obj)]
        want = {}
        for rec, value in targets:
            n = missing_count(value)
            if n:
                want[rec or str(path)] = n
        info = run("info", path, check=0)
        assert notes(info.stderr) == want, path.name
        for rec, value in targets:
            if not tensor_walk(value):
                continue
            p = run("keys", path, *(["--record", rec] if rec else []), check=0)
            n = missing_count(value)
            assert notes(p.stderr) == ({rec or str(path): n} if n else {}), f"{path.name} {rec}"
            # stdout is the view itself, as before the note: with --json it still parses
            p = run("keys", path, *(["--record", rec] if rec else []), "--json", check=0)
            assert len(json.loads(p.stdout)) == len(view_tensors(value)), f"{path.name} {rec}"
            assert notes(p.stderr) == ({rec or str(path): n} if n else {})
            seen_notes += bool(n)
        # --json keeps stdout parseable; the note stays on stderr
        p = run("info", path, "--json", check=0)
        js = json.loads(p.stdout)
        for r in js["records"]:
            if "tensors" in r:
                key = r["name"] or str(path)
                assert r["tensors_not_in_view"] == want.get(key, 0), (path.name, key)
    assert seen_notes >= 6


def test_yolov5_note_is_the_plain_tensor_attributes():
    """YOLOv5's Detect.stride, model.stride, grid/anchor_grid lists: torch's state_dict leaves them out."""
    path = FIXTURES / "yolov5s-train.pt"
    model = load(path)["model"]
    p = run("keys", path, check=0)
    held = {id(t): n for n, t in tensor_walk(model)}
    shown = {id(t) for t in model.state_dict(keep_vars=True).values()}
    left = sorted(n for i, n in held.items() if i not in shown)
    assert notes(p.stderr) == {"model": len(left)} and len(left) > 0
    listed = {e["name"] for e in run_json("keys", path, "--all")}
    assert set(left) <= listed and "stride" in left


def test_convert_refuses_a_view_that_shows_nothing(tmp_path):
    """A record whose view is empty while it holds tensors: convert exits 2 naming how many it could not read."""
    made_files(tmp_path)
    path = tmp_path / "holder.pt"
    held = len(tensor_walk(load(path)["model"]))
    for out in ("h.safetensors", "h.pt"):
        p = run("convert", path, tmp_path / out)
        assert_clean_failure(p, path)
        assert f"holds {held} tensors" in p.stderr and "Holder" in p.stderr, p.stderr
        assert not (tmp_path / out).exists()
    # a dict subclass: the same
    path = tmp_path / "dict-subclass.pt"
    p = run("convert", path, tmp_path / "d.safetensors")
    assert_clean_failure(p, path)
    assert "holds 2 tensors" in p.stderr


def test_convert_of_a_partial_view_says_what_it_leaves_out(tmp_path):
    """convert writes the state_dict view (as torch's state_dict()) and says how many tensors it did not write."""
    made_files(tmp_path)
    path = tmp_path / "module-plus-extras.pt"
    p = run("convert", path, tmp_path / "m.safetensors", check=0)
    n = missing_count(load(path)["model"])
    assert n == 4 and f"{n} tensors of 'model' are not in its state_dict view" in p.stderr, p.stderr
    from safetensors.torch import load_file
    got = load_file(tmp_path / "m.safetensors")
    want = load(path)["model"].state_dict()
    assert list(sorted(got)) == sorted(want) and all(bits(got[k]) == bits(want[k]) for k in want)


def test_strip_never_reports_zero_parameters_it_was_not_asked_for(tmp_path):
    made_files(tmp_path)
    # the weights record is a custom object: its tensors are in no view
    path = tmp_path / "holder.pt"
    held = len(tensor_walk(load(path)["model"]))
    p = run("strip", path, tmp_path / "o.pt")
    assert_clean_failure(p, path)
    assert f"holds {held} tensors" in p.stderr and not (tmp_path / "o.pt").exists()
    # every tensor is training state: nothing would be left
    torch.save({"model": None, "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}},
                                             "param_groups": [{"params": [0], "lr": 0.1}]}, "epoch": 2},
               tmp_path / "opt-only.pt")
    p = run("strip", tmp_path / "opt-only.pt", tmp_path / "o.pt")
    assert_clean_failure(p, tmp_path / "opt-only.pt")
    assert "no weights" in p.stderr and not (tmp_path / "o.pt").exists()
    # --state-dict of a record whose view is empty: refused, not an empty state dict
    p = run("strip", path, tmp_path / "o.pt", "--state-dict")
    assert_clean_failure(p, path)
    # asked for: --drop everything with --force writes a module with no tensors in its state_dict
    m = nn.Linear(2, 2)
    torch.save({"model": m}, tmp_path / "lin.pt")
    s = run_json("strip", tmp_path / "lin.pt", tmp_path / "o.pt", "--drop", "*", "--force")
    assert s["parameters"] == 0 and sorted(s["dropped"]) == ["bias", "weight"]
    assert load(tmp_path / "o.pt")["model"].state_dict() == {}


def test_transfer_refuses_a_view_that_shows_nothing(tmp_path):
    made_files(tmp_path)
    m = nn.Linear(3, 4)
    torch.save({"model": m}, tmp_path / "into.pt")
    path = tmp_path / "holder.pt"
    held = len(tensor_walk(load(path)["model"]))
    p = run("transfer", path, tmp_path / "into.pt", tmp_path / "o.pt")
    assert p.returncode == 2 and f"holds {held} tensors" in p.stderr and p.stdout == "", p.stderr
    assert not (tmp_path / "o.pt").exists()


# Point 5: --state-dict on nested weights.

def small_net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def same_state_dict(got, want, where):
    assert type(got) is collections.OrderedDict, f"{where}: {type(got)}"
    assert list(got) == list(want), where
    for k in want:
        a, b = want[k], got[k]
        assert a.dtype == b.dtype and a.shape == b.shape and bits(a) == bits(b), f"{where}.{k}"
    assert getattr(got, "_metadata", None) == getattr(want, "_metadata", None), f"{where}: _metadata"


def test_state_dict_keeps_the_siblings_of_a_nested_state_dict(tmp_path):
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 3, 3)).sum().backward()
    opt.step()
    src = {"model": {"state_dict": net.state_dict(), "model_args": {"depth": 3, "act": "silu", "dims": [4, 2]}},
           "optimizer": opt.state_dict(), "epoch": 7}
    torch.save(src, tmp_path / "nested.pt")
    s = run_json("strip", tmp_path / "nested.pt", tmp_path / "out.pt", "--state-dict")
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(got) == ["model", "optimizer", "epoch"] and got["optimizer"] is None and got["epoch"] == -1
    assert list(got["model"]) == ["state_dict", "model_args"]
    same_state_dict(got["model"]["state_dict"], src["model"]["state_dict"], "model.state_dict")
    assert got["model"]["model_args"] == src["model"]["model_args"]
    assert s["weights_record"] == "model"
    # the same with --record naming the nested state dict, and renaming inside it
    s = run_json("strip", tmp_path / "nested.pt", tmp_path / "out2.pt", "--state-dict", "--record", "model.state_dict",
                 "--rename", "0.=stem.")
    got = torch.load(tmp_path / "out2.pt", weights_only=True)
    assert got["model"]["model_args"] == src["model"]["model_args"]
    want = {k.replace("0.", "stem.", 1) if k.startswith("0.") else k: v for k, v in src["model"]["state_dict"].items()}
    assert list(got["model"]["state_dict"]) == list(want)
    # a module inside the nested dict becomes its state dict; its siblings stay
    torch.save({"model": {"net": net, "model_args": {"depth": 3}}}, tmp_path / "nested-module.pt")
    s = run_json("strip", tmp_path / "nested-module.pt", tmp_path / "out3.pt", "--state-dict")
    got = torch.load(tmp_path / "out3.pt", weights_only=True)
    assert got["model"]["model_args"] == {"depth": 3}
    want = net.state_dict()
    assert list(got["model"]["net"]) == list(want) and all(bits(got["model"]["net"][k]) == bits(want[k]) for k in want)
    assert s["records"]["model.net"]["after"].startswith(f"state dict ({len(want)} tensors")
    # a module inside a tuple at the top level (torch.save((model, extra))): the same
    torch.save((net, {"x": torch.ones(2)}), tmp_path / "tuple.pt")
    run_json("strip", tmp_path / "tuple.pt", tmp_path / "out4.pt", "--state-dict")
    got = torch.load(tmp_path / "out4.pt", weights_only=True)
    assert type(got) is tuple and list(got[0]) == list(want) and bits(got[1]["x"]) == bits(torch.ones(2))


def test_state_dict_on_a_lightning_checkpoint(tmp_path):
    """Lightning's layout: state_dict beside hyper_parameters and the loop state. The state dict keeps its
    _metadata and order; every sibling is loaded back as it was (or None where strip clears training state)."""
    net = small_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3, 3, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    sd = collections.OrderedDict((f"model.{k}", v) for k, v in net.state_dict().items())
    sd._metadata = collections.OrderedDict((f"model.{k}" if k else "model", v) for k, v in net.state_dict()._metadata.items())
    src = {"epoch": 4, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
           "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 5}}}}, "callbacks": {},
           "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
           "hparams_name": "kwargs", "hyper_parameters": {"lr": 1e-3, "widths": [4, 8], "name": "net"}}
    torch.save(src, tmp_path / "lightning.ckpt")
    for extra in ([], ["--record", "state_dict"]):
        out = tmp_path / "out.ckpt"
        s = run_json("strip", tmp_path / "lightning.ckpt", out, "--state-dict", *extra)
        assert s["weights_record"] == "state_dict" and s["parameters"] == sum(v.numel() for v in sd.values())
        got = torch.load(out, weights_only=True)
        # Lightning's conventions (docs/frameworks.md): its training state goes, everything its loader reads stays
        assert s["framework"] == "lightning"
        training = {"optimizer_states", "lr_schedulers", "loops", "callbacks"}
        assert list(got) == [k for k in src if k not in training]
        same_state_dict(got["state_dict"], sd, "state_dict")
        for k in got:
            if k != "state_dict":
                assert json.dumps(got[k], default=str, sort_keys=True) == json.dumps(src[k], default=str, sort_keys=True), k


def test_diff_says_what_its_views_leave_out(tmp_path):
    """diff compares state_dict views; tensors outside them are compared by dtype and shape with the record's
    structure and, with --values, by value, paired by path; a line on stderr per file and record says so."""
    torch.save({"model": Holder(w=torch.ones(3))}, tmp_path / "a.pt")
    torch.save({"model": Holder(w=torch.zeros(3))}, tmp_path / "b.pt")
    torch.save({"model": Holder(w=torch.zeros(4))}, tmp_path / "c.pt")
    p = run("diff", tmp_path / "a.pt", tmp_path / "b.pt", "--values", "--json")
    n = missing_count(load(tmp_path / "a.pt")["model"])
    lines = p.stderr.splitlines()
    assert lines == [f"note: {tmp_path / x}.pt: {n} tensors are not in the state_dict view of 'model' (their values are "
                     f"compared by path); see keys --all" for x in "ab"], p.stderr
    # the values differ (ones vs zeros): found by path, not "no differences"
    d = json.loads(p.stdout)
    assert p.returncode == 1 and d["equal"] is False
    assert [(t["record"], t["name"], t["changes"], t["differing"]) for t in d["tensors"]] == [("model", "w", ["values"], 3)]
    p = run("diff", tmp_path / "a.pt", tmp_path / "a.pt", "--values", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["values_compared"] == 1
    p = run("diff", tmp_path / "a.pt", tmp_path / "c.pt", "--json")
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 2
    assert json.loads(p.stdout)["records"][0]["details"][0]["path"] == "model.w"
