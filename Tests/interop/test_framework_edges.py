"""Framework checkpoints made in ways the fixtures of test_frameworks.py are not (found by running ckpt on files made
by other code paths of the same frameworks): detectron2's DefaultTrainer `trainer` record, the PyTorch tutorial's save
pattern, Lightning files with few records (a weights-only save, ckpt's own output), a user's EMA record in a Lightning
file, look-alikes of fairseq, mmcv 1.x, timm weights with wrapper prefixes, accelerate's save_state folder. Every
expectation is torch's view of the input with the framework's convention (docs/frameworks.md) applied."""
import collections
import os
import shutil
import sys

import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES, ROOT, run, run_json

sys.path.insert(0, str(ROOT / "scripts"))
import torchvision_ops  # noqa: E402

torchvision_ops.declare()
pytestmark = pytest.mark.filterwarnings("ignore")


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def trained():
    m = net()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    return m, opt, sched


def same_weights(want, got):
    assert list(got) == list(want)
    for k in want:
        assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]), k


def strip(tmp_path, src, *opts):
    out = tmp_path / "out.pt"
    p = run("strip", src, out, *opts, check=0)
    return torch.load(out, weights_only=False), p


def test_detectron2_default_trainer_record_is_training_state(tmp_path):
    """detectron2/engine/defaults.py: DefaultTrainer's checkpointer saves `trainer` (optimizer, scheduler, grad
    scaler state) beside model and iteration."""
    m, opt, sched = trained()
    src = {"model": m.state_dict(), "trainer": {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                "iteration": 10}, "iteration": 10}
    torch.save(src, tmp_path / "model_0000009.pth")
    assert run_json("info", tmp_path / "model_0000009.pth")["framework"]["id"] == "detectron2"
    got, _ = strip(tmp_path, tmp_path / "model_0000009.pth")
    assert list(got) == ["model", "iteration"] and got["iteration"] == 10
    same_weights(src["model"], got["model"])


def test_a_record_holding_an_optimizer_state_is_reported(tmp_path):
    m, opt, _ = trained()
    torch.save({"model": m.state_dict(), "solver": {"opt": opt.state_dict()}}, tmp_path / "a.pt")
    p = run("strip", tmp_path / "a.pt", tmp_path / "o.pt", check=0)
    assert "kept: `solver` looks like training state" in p.stderr and "--drop-record solver" in p.stderr


def test_the_pytorch_tutorial_save_pattern(tmp_path):
    """The tutorial's torch.save({'epoch', 'model_state_dict', 'optimizer_state_dict', 'loss'}), with the scheduler and
    AMP scaler state dicts people add: every state dict but the model's is training state (set to None, generic)."""
    m, opt, sched = trained()
    scaler = torch.amp.GradScaler("cpu")
    src = {"epoch": 3, "model_state_dict": m.state_dict(), "optimizer_state_dict": opt.state_dict(),
           "scheduler_state_dict": sched.state_dict(), "scaler_state_dict": scaler.state_dict(), "loss": 0.25}
    torch.save(src, tmp_path / "tutorial.tar")
    got, _ = strip(tmp_path, tmp_path / "tutorial.tar")
    assert list(got) == list(src)
    for k in ("optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict"):
        assert got[k] is None, k
    assert got["epoch"] == -1 and got["loss"] == 0.25
    same_weights(src["model_state_dict"], got["model_state_dict"])


def lightning_weights_only_file(path):
    """What Lightning's dump_checkpoint(weights_only=True) writes before 1.5 (no loops): version, counters, state_dict,
    hyper-parameters (src/lightning/pytorch/trainer/connectors/checkpoint_connector.py)."""
    m = net()
    src = {"epoch": 2, "global_step": 40, "pytorch-lightning_version": "1.4.9",
           "state_dict": collections.OrderedDict((f"model.{k}", v) for k, v in m.state_dict().items()),
           "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.1}}
    torch.save(src, path)
    return src


def test_lightning_with_few_records_is_lightning_and_strip_is_idempotent(tmp_path):
    src = lightning_weights_only_file(tmp_path / "w.ckpt")
    assert run_json("info", tmp_path / "w.ckpt")["framework"]["id"] == "lightning"
    got, _ = strip(tmp_path, tmp_path / "w.ckpt")
    assert got["epoch"] == src["epoch"] and got["global_step"] == src["global_step"] and list(got) == list(src)
    # ckpt's own output of a full Lightning checkpoint is still a Lightning checkpoint, and strips to itself
    once = tmp_path / "once.ckpt"
    run("strip", FIXTURES / "frameworks" / "lightning.pt", once, check=0)
    assert run_json("info", once)["framework"]["id"] == "lightning"
    twice = tmp_path / "twice.ckpt"
    run("strip", once, twice, check=0)
    a, b = torch.load(once), torch.load(twice)
    assert list(a) == list(b) and a["epoch"] == b["epoch"]


def test_a_users_ema_record_in_a_lightning_file(tmp_path):
    """A LightningModule's on_save_checkpoint adding checkpoint['ema_state_dict'] (no WeightAveraging callback):
    --use-ema takes it; a plain strip keeps it and says it looks like training state."""
    src = lightning_weights_only_file(tmp_path / "w.ckpt")
    src["ema_state_dict"] = {k: v * 0.5 if v.is_floating_point() else v for k, v in src["state_dict"].items()}
    torch.save(src, tmp_path / "ema.ckpt")
    got, _ = strip(tmp_path, tmp_path / "ema.ckpt", "--use-ema")
    same_weights(src["ema_state_dict"], got["state_dict"])
    _, p = strip(tmp_path, tmp_path / "ema.ckpt")
    assert "kept: `ema_state_dict` looks like training state" in p.stderr


def test_model_and_cfg_alone_are_not_fairseq(tmp_path):
    """fairseq's trainer.py always writes optimizer_history; a research script's {model, optimizer, cfg, epoch} is
    no fairseq file: the generic conventions apply (optimizer set to None)."""
    m, opt, _ = trained()
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "cfg": {"lr": 0.1}, "epoch": 4},
               tmp_path / "r.pt")
    assert run_json("info", tmp_path / "r.pt")["framework"] is None
    got, _ = strip(tmp_path, tmp_path / "r.pt")
    assert got["optimizer"] is None and got["epoch"] == -1


def test_mmcv_1x_checkpoint_is_published_as_mmdetection_does(tmp_path):
    """mmcv/runner/checkpoint.py (1.x) save_checkpoint: meta (with mmcv_version), state_dict, optimizer; mmdet 2.x
    tools/model_converters/publish_model.py deletes optimizer."""
    m, opt, _ = trained()
    src = {"meta": {"mmcv_version": "1.7.2", "epoch": 12, "iter": 100}, "state_dict": m.state_dict(),
           "optimizer": opt.state_dict()}
    torch.save(src, tmp_path / "epoch_12.pth")
    assert run_json("info", tmp_path / "epoch_12.pth")["framework"]["id"] == "mmengine"
    got, _ = strip(tmp_path, tmp_path / "epoch_12.pth")
    assert list(got) == ["meta", "state_dict"] and got["meta"] == src["meta"]
    same_weights(src["state_dict"], got["state_dict"])


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_timm_convert_writes_the_names_strip_writes(tmp_path, prefix):
    """timm's clean_state_dict (timm/models/_helpers.py) takes `module.` / `_orig_mod.` off; convert and strip agree."""
    from safetensors.torch import load_file

    src = torch.load(FIXTURES / "frameworks" / "timm.pt", weights_only=False)
    src["state_dict"] = collections.OrderedDict((prefix + k, v) for k, v in src["state_dict"].items())
    torch.save(src, tmp_path / "last.pth.tar")
    run("convert", tmp_path / "last.pth.tar", tmp_path / "w.safetensors", check=0)
    stripped, _ = strip(tmp_path, tmp_path / "last.pth.tar")
    converted = load_file(tmp_path / "w.safetensors")
    want = collections.OrderedDict((k[len(prefix):], v) for k, v in src["state_dict"].items())
    assert sorted(converted) == sorted(want) and list(stripped) == list(want)
    for k in want:
        assert torch.equal(converted[k], want[k]) and torch.equal(stripped[k], want[k]), k


def test_accelerate_save_state_folder_strips_to_the_weights(tmp_path):
    """accelerate's Accelerator.save_state writes model.safetensors beside optimizer.bin, scheduler.bin and
    random_states_0.pkl (accelerate/utils/constants.py names); a folder strip copies none of them."""
    from accelerate import Accelerator
    from safetensors.torch import load_file

    acc = Accelerator(cpu=True)
    m, opt, sched = acc.prepare(*trained())
    acc.backward(m(torch.randn(3, 4)).sum())
    opt.step()
    sched.step()
    state = tmp_path / "state"
    acc.save_state(str(state))
    written = sorted(os.listdir(state))
    assert "model.safetensors" in written and len(written) > 1
    out = tmp_path / "published"
    run("strip", state, str(out) + "/", check=0)
    assert sorted(os.listdir(out)) == ["model.safetensors"]
    want = load_file(state / "model.safetensors")
    got = load_file(out / "model.safetensors")
    assert list(got) == list(want) and all(torch.equal(want[k], got[k]) for k in want)


def test_scan_of_a_trainer_folder_reads_every_pickle_resuming_loads(tmp_path):
    """Resuming from a Trainer folder unpickles optimizer.pt, rng_state.pth, training_args.bin (transformers
    trainer.py _load_from_checkpoint, _load_rng_state); scan of the folder reads each, and a dangerous one makes the
    folder dangerous (exit 1). The payload is written, never loaded."""
    folder = tmp_path / "checkpoint-3"
    shutil.copytree(FIXTURES / "frameworks" / "hf-trainer" / "checkpoint-3", folder)
    clean = run("scan", folder)
    each = {name: run("scan", folder / name) for name in ("optimizer.pt", "rng_state.pth", "training_args.bin")}
    for name, p in each.items():
        assert f"== {folder / name}\n{p.stdout}" in clean.stdout, name  # the file's own report, in the folder's
    # the folder's verdict is its worst file's (transformers' TrainingArguments pickles enum calls: not allow-listed)
    assert clean.returncode == max(p.returncode for p in each.values())
    (folder / "training_args.bin").write_bytes(b"cbuiltins\nexec\n(Vprint(1)\ntR.")
    p = run("scan", folder)
    assert p.returncode == 1 and "training_args.bin" in p.stderr and "builtins.exec" in p.stdout
