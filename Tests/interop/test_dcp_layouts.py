"""DCP folders laid out the ways users' trainers save them (issue 15's stranger test, notes B2-B5), made here in one
process with torch in a few seconds:

- a flattened optimizer state dict (`get_optimizer_state_dict(..., StateDictOptions(flatten_optimizer_state_dict=True))`,
  torch/distributed/checkpoint/state_dict.py `_flatten_optim_state_dict`: keys `state.<fqn>.<name>` and
  `param_groups.<fqn>.<key>`) is optimizer state wherever ckpt judges it;
- torchtitan's layout (torchtitan/components/checkpoint.py `CheckpointManager._flattened_model_states_sd`: the model's
  keys at the root of the DCP state dict, beside `optimizer` (flattened), `lr_scheduler`, `dataloader`, `train_state`):
  `keys` and `consolidate` give the model's tensors only, saying on stderr what was left out;
- a bytes value (torchtitan's `dataloader` state) shown as Python's repr shows it.
"""
import pickle

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from distlib import flat_tensors as flat
from conftest import assert_clean_failure, run, run_json


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def trained():
    """A small model after one AdamW step, its LR scheduler stepped once."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sched.step()
    return m, opt, sched


def flat_optimizer(m, opt):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(m, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))


DATALOADER = b"\x80\x04K\x07.'\\\t\xff"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{name: path}: `flat-optim` ({"model", "optimizer"} with the flattened optimizer, as fsdp2 users save it),
    `torchtitan` (its layout), `flat-optim.pt` (torch.save of the model and the flattened optimizer under a name that
    says nothing: the rule is the structure, not the name)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    root = tmp_path_factory.mktemp("layouts")
    m, opt, sched = trained()
    osd = flat_optimizer(m, opt)
    assert osd and all(k.startswith(("state.", "param_groups.")) for k in osd)  # the premise: torch's flat form
    dcp.save({"model": get_model_state_dict(m), "optimizer": osd}, checkpoint_id=root / "flat-optim")
    # torchtitan/components/checkpoint.py: states {"model", "optimizer", "lr_scheduler", "dataloader", "train_state"};
    # _flattened_model_states_sd drops "model" and puts model.state_dict() at the root; its OptimizersContainer gives
    # the flattened optimizer state dict, its dataloader state is {"dp_rank_<r>": pickled bytes}.
    sd = {"optimizer": osd, "lr_scheduler": {"lr_scheduler_0": {k: v for k, v in sched.state_dict().items()
                                                                 if k != "lr_lambdas"}},
          "dataloader": {"dp_rank_0": DATALOADER}, "train_state": {"step": 2, "global_avg_losses": [2.5]}}
    sd.update(get_model_state_dict(m))
    dcp.save(sd, checkpoint_id=root / "torchtitan")
    torch.save({"model": m.state_dict(), "extra": osd}, root / "flat-optim.pt")
    return {"flat-optim": root / "flat-optim", "torchtitan": root / "torchtitan", "flat-optim.pt": root / "flat-optim.pt",
            "model": {k: v.detach().clone() for k, v in get_model_state_dict(m).items()}}


def oracle(folder):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = folder.parent / (folder.name + ".oracle.pt")
    if not out.exists():
        dcp_to_torch_save(folder, out)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("name,record", [("flat-optim", "optimizer"), ("flat-optim.pt", "extra")])
def test_a_flattened_optimizer_state_dict_is_optimizer_state(folders, tmp_path, name, record):
    """info calls the record optimizer state; consolidate --record refuses it as optimizer state (exit 2, one line,
    nothing written), as it refuses an unflattened one; consolidate of the folder writes the model's weights."""
    src = folders[name]
    kinds = {r["name"]: r["kind"] for r in run_json("info", src)["records"]}
    assert kinds[record] == "optimizer", kinds
    out = tmp_path / "o.pt"
    p = run("consolidate", src, out, "--record", record)
    assert_clean_failure(p, "optimizer state")
    assert not out.exists()
    st = tmp_path / "w.safetensors"
    run("consolidate", src, st, check=0)
    got = load_file(st)
    want = folders["model"]
    assert sorted(got) == sorted(want)
    for k, t in want.items():
        assert same_bits(got[k], t), k


def test_torchtitan_layout_gives_the_model_tensors_only(folders, tmp_path):
    """The model's keys at the root beside `optimizer`: keys lists the model's tensors, in dcp_to_torch_save's order,
    and a note names the optimizer record left out; consolidate writes them bit-identical to dcp_to_torch_save's, with
    the line on stderr; --record optimizer still lists the optimizer's tensors."""
    folder = folders["torchtitan"]
    want = {k: v for k, v in oracle(folder).items() if torch.is_tensor(v)}
    assert sorted(want) == sorted(folders["model"])  # the premise: the root tensors are the model's
    p = run("keys", folder, check=0)
    assert [line.split()[0] for line in p.stdout.splitlines()] == list(want)
    assert "optimizer state left out" in p.stderr and "'optimizer'" in p.stderr
    for ext in ("safetensors", "pt"):
        out = tmp_path / f"tt.{ext}"
        p = run("consolidate", folder, out, check=0)
        assert "optimizer state left out" in p.stderr and "'optimizer'" in p.stderr
        got = load_file(out) if ext == "safetensors" else torch.load(out, weights_only=True)
        if ext == "pt":
            assert list(got) == list(want)
        assert sorted(got) == sorted(want)
        for k, t in want.items():
            assert same_bits(got[k], t), (ext, k)
    optim = [k["name"] for k in run_json("keys", folder, "--record", "optimizer")]
    assert optim == [k for k, v in oracle(folder)["optimizer"].items() if torch.is_tensor(v)]


def test_a_bytes_value_is_shown_as_python_shows_it(folders):
    """torchtitan's dataloader state is bytes, pickled by torch.save (protocol 2) as _codecs.encode(str, 'latin1'):
    info shows it as Python's repr of the value torch.load gives."""
    folder = folders["torchtitan"]
    items = run_json("info", folder)["distributed"]["other_items"]
    value = oracle(folder)["dataloader"]["dp_rank_0"]
    assert value == DATALOADER
    assert items["dataloader.dp_rank_0"] == repr(value)




def test_a_nested_value_saved_whole_with_its_tensors_is_read(tmp_path):
    """DefaultSavePlanner(flatten_state_dict=False) stores every top-level value that is not a tensor as one bytes
    item, a whole torch.save zip: here a dict holding a tensor, a view sharing its storage and a bfloat16 tensor. info,
    keys, convert and consolidate give what dcp_to_torch_save gives (bit for bit, in its order), and scan judges every
    pickle of the folder (.metadata and each item's data.pkl)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner

    m, _, _ = trained()
    base = torch.arange(6.)
    sd = dict(m.state_dict())
    sd["extra"] = {"epoch": 4, "t": base, "view": base[2:5], "bf": torch.arange(4.).bfloat16().reshape(2, 2)}
    folder = tmp_path / "noflatten"
    dcp.save(sd, checkpoint_id=folder, planner=DefaultSavePlanner(flatten_state_dict=False))
    want = flat(oracle(folder))
    assert "extra.view" in want  # the premise: torch reads the nested tensors back
    assert [k["name"] for k in run_json("keys", folder)] == list(want)
    info = run_json("info", folder)
    assert "extra" in info["distributed"]["other_items"]
    for cmd, ext in (("convert", "pt"), ("convert", "safetensors"), ("consolidate", "pt")):
        out = tmp_path / f"{cmd}.{ext}"
        p = run(cmd, folder, out, check=0)
        got = load_file(out) if ext == "safetensors" else flat(torch.load(out, weights_only=True))
        if ext == "safetensors":  # a view of another tensor's storage is left out as an alias, as for a torch file
            assert "extra.view" in p.stderr and "extra.view" not in got
            got["extra.view"] = got["extra.t"][2:5]
        assert sorted(got) == sorted(want), cmd
        for k, t in want.items():
            assert same_bits(got[k], t), (cmd, ext, k)
    report = run_json("scan", folder)
    md = pickle.load(open(folder / ".metadata", "rb"))
    assert len(report["pickles"]) == 1 + len(md.storage_data)  # every item is a torch.save zip with one data.pkl
    assert report["dangerous"] == 0 and report["verdict"] == "safe"


def test_a_damaged_storage_of_a_nested_value_is_refused(tmp_path):
    """One bit of a storage record inside the `extra` item flipped (the zip's CRC-32 no longer matches, as torch's
    writer computed it): keys and convert refuse the folder with one line naming the record, nothing written."""
    import io
    import zipfile

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner

    folder = tmp_path / "noflatten"
    dcp.save({"w": torch.ones(3), "extra": {"epoch": 4, "t": torch.arange(6.)}}, checkpoint_id=folder,
             planner=DefaultSavePlanner(flatten_state_dict=False))
    md = pickle.load(open(folder / ".metadata", "rb"))
    info = next(s for i, s in md.storage_data.items() if i.fqn == "extra")
    path = folder / info.relative_path
    data = bytearray(path.read_bytes())
    item = bytes(data[info.offset:info.offset + info.length])
    z = zipfile.ZipFile(io.BytesIO(item))
    record = next(n for n in z.namelist() if n.endswith("/data/0"))
    h = item[z.getinfo(record).header_offset:][:30]
    at = info.offset + z.getinfo(record).header_offset + 30 + int.from_bytes(h[26:28], "little") \
        + int.from_bytes(h[28:30], "little")
    data[at + 4] ^= 0x40
    path.write_bytes(bytes(data))
    # Listing reads no tensor bytes (as for a .pt with a damaged record); reading them checks the record's CRC-32.
    assert run("keys", folder).returncode == 0
    for cmd, out in (("convert", tmp_path / "o.safetensors"), ("consolidate", tmp_path / "c.pt")):
        p = run(cmd, folder, out)
        assert_clean_failure(p, "data/0")
        assert "corrupted" in p.stderr
        assert not out.exists()
