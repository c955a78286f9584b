"""DeepSpeed ZeRO folders beyond test_distributed.py: what `info` says of the layout against what torch and DeepSpeed
read from the files, the scan of every pickle, and damaged or unusual folders refused with one line (and, where
DeepSpeed's own zero_to_fp32 refuses the same folder, checked that it does)."""
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

import distlib
from conftest import assert_clean_failure, run, run_json

DIST = distlib.DIST
ZERO = distlib.ZERO_FOLDERS


def ds_run(script, *args):
    """Runs `script` with DeepSpeed's python (distlib.ds_python: .venv-ds, or CKPT_DS_PYTHON)."""
    py = distlib.ds_python()
    env = dict(os.environ, DS_ACCELERATOR="cpu", PATH=f"{Path(py).parent}:{os.environ.get('PATH', '')}")
    return subprocess.run([py, "-c", script, *map(str, args)], capture_output=True, text=True, env=env)


_DS_FACTS = r"""
import glob, json, os, sys, torch
from deepspeed.utils.zero_to_fp32 import get_model_state_files, get_optim_files
tagdir = sys.argv[1]
model, optim = get_model_state_files(tagdir), get_optim_files(tagdir)
opt_bytes = 0
stage = None
for f in optim:
    sd = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    stage = stage if stage is not None else int(sd["zero_stage"])
    base = sd["base_optimizer_state"] if int(sd["zero_stage"]) <= 2 else sd["optimizer_state_dict"]
    def walk(v):
        global opt_bytes
        if torch.is_tensor(v): opt_bytes += v.numel() * v.element_size()
        elif isinstance(v, dict): [walk(x) for x in v.values()]
        elif isinstance(v, (list, tuple)): [walk(x) for x in v]
    walk(base)
    pc = sd["partition_count"]
print(json.dumps({"model": [os.path.basename(f) for f in model], "optim": [os.path.basename(f) for f in optim],
                  "optimizer_bytes": opt_bytes, "stage": stage, "partition_count": repr(pc)}))
"""


def ds_facts(tagdir):
    """What DeepSpeed's own code finds in a tag folder: the files zero_to_fp32 lists (its natural order), the bytes of
    the base optimizer's tensors in every optimizer file, rank 0's stage and partition count."""
    p = ds_run(_DS_FACTS, tagdir)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def oracle_refuses(folder):
    """Whether zero_to_fp32's get_fp32_state_dict_from_zero_checkpoint raises on the folder (the folder holding
    `latest`)."""
    script = ("import sys\nfrom deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint as f\n"
              "try:\n    f(sys.argv[1])\nexcept Exception as e:\n    print('REFUSED', type(e).__name__, e)\n")
    p = ds_run(script, folder)
    return "REFUSED" in p.stdout


def tag_of(folder):
    return (folder / "latest").read_text().strip()


@pytest.mark.parametrize("folder", ZERO)
def test_info_layout_against_deepspeed_and_torch(folder):
    info = run_json("info", DIST / folder)
    if "distributed" not in info:
        pytest.skip("info does not render DistributedLayout on this branch (branch dcp renders it)")
    d = info["distributed"]
    tagdir = DIST / folder / tag_of(DIST / folder)
    facts = ds_facts(tagdir)
    tag = tag_of(DIST / folder)
    assert d["format"] == f"DeepSpeed ZeRO stage {facts['stage']}"
    assert d["world_size"] == len(facts["optim"])
    assert d["files"] == [f"{tag}/{n}" for n in facts["model"] + facts["optim"]]
    assert d["optimizer_bytes"] == facts["optimizer_bytes"]
    sd = distlib.zero_oracle(DIST / folder)
    assert list(d["chunks"]) == list(sd)
    assert all(1 <= n <= d["world_size"] for n in d["chunks"].values())
    # Tied names are one tensor (stage 1/2's other tensors are views of one flat vector: told apart by their place).
    unique = {(t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride()): t for t in sd.values()}
    assert d["model_bytes"] == sum(t.numel() * t.element_size() for t in unique.values())
    # The non-tensor items of rank 0's model file, as Python writes them (the model files load with weights_only).
    model0 = torch.load(tagdir / facts["model"][0], map_location="cpu", weights_only=True)
    skip = {"module", "buffer_names", "param_shapes", "frozen_param_shapes", "frozen_param_fragments"}
    other = d["other_items"]
    for k, v in model0.items():
        if k not in skip:
            assert other[k] == repr(v), k
    assert other["zero_stage"] == str(facts["stage"])
    assert other["partition_count"] == facts["partition_count"]
    # Stage 1 keeps no fp32 copy of frozen parameters: the module's tensors zero_to_fp32 leaves out are named.
    left_out = [k for k in model0["module"] if k not in sd]
    if left_out:
        assert any(all(k in n for k in left_out) for n in d["notes"]), d["notes"]


@pytest.mark.parametrize("folder", ["zero2", "zero3/global_step2"])
def test_scan_lists_every_files_pickle(folder):
    p = run("scan", DIST / folder, "--json")
    if p.returncode == 2 and "a folder" in p.stderr:
        pytest.skip("scan of a distributed folder comes with branch dcp")
    report = json.loads(p.stdout)
    top = DIST / folder.split("/")[0]
    tagdir = top / tag_of(top)
    names = sorted(n for n in os.listdir(tagdir) if n.endswith("_states.pt"))
    text = json.dumps(report)
    for n in names:
        assert n in text, n
    # DeepSpeed's own classes are data: needs its code to load, nothing dangerous.
    assert "deepspeed.runtime.zero.config.ZeroStageEnum" in text
    assert '"dangerous"' not in json.dumps([g.get("class") for g in report.get("globals", [])])


# ---- damaged and unusual folders ----

def copy(src, tmp_path, label):
    dst = tmp_path / label
    shutil.copytree(src, dst)
    return dst


def refused(folder, tmp_path, name):
    """keys and convert refuse with one line naming `name`; nothing is written. (convert is given --allow-unsafe: the
    refusal tested is the reader's, whatever the container and scan checks say before it.)"""
    out = tmp_path / "outdir"
    out.mkdir(exist_ok=True)
    for target in ("out.pt", "out.safetensors"):
        assert_clean_failure(run("convert", folder, out / target, "--allow-unsafe"), name)
    assert os.listdir(out) == []
    assert_clean_failure(run("keys", folder), name)


def test_missing_model_file_at_stage_3_is_named(tmp_path):
    d = copy(DIST / "zero3", tmp_path, "z3")
    victim = d / tag_of(d) / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    victim.unlink()
    refused(d, tmp_path, victim.name)


@pytest.mark.parametrize("folder", ZERO)
def test_param_shapes_past_the_partitions_is_refused_as_deepspeed_refuses_it(tmp_path, folder):
    # A model file whose param_shapes ask for more elements than the optimizer files' fp32 partitions hold (the model
    # files load and save with torch alone).
    d = copy(DIST / folder, tmp_path, folder)
    tagdir = d / tag_of(d)
    model = sorted(n for n in os.listdir(tagdir) if n.endswith("_model_states.pt"))[0]
    sd = torch.load(tagdir / model, map_location="cpu", weights_only=True)
    group = sd["param_shapes"][0]
    name = list(group)[-1]
    group[name] = torch.Size([group[name].numel() + 40])
    torch.save(sd, tagdir / model)
    assert oracle_refuses(d)
    refused(d, tmp_path, model)


def test_shortened_partition_record_is_refused(tmp_path):
    # The rank 1 optimizer file's zip rewritten with its fp32 partition record cut by 8 bytes: the storage no longer
    # holds what the pickle declares (torch.load refuses it too).
    d = copy(DIST / "zero2", tmp_path, "z2")
    tagdir = d / tag_of(d)
    name = sorted(n for n in os.listdir(tagdir) if n.endswith("_optim_states.pt"))[-1]
    src = tagdir / name
    with zipfile.ZipFile(src) as z:
        items = [(i, z.read(i)) for i in z.infolist()]
    # The partition is the largest record of the file whose tensor is saved with requires_grad (the fp32 group).
    stem = name[:-3]
    part = max((i for i, _ in items if i.filename.startswith(f"{stem}/data/")), key=lambda i: i.file_size)
    with zipfile.ZipFile(src, "w", zipfile.ZIP_STORED) as z:
        for info, data in items:
            z.writestr(info, data[:-8] if info.filename == part.filename else data)
    refused(d, tmp_path, name)


def test_latest_naming_a_missing_tag_is_refused(tmp_path):
    d = copy(DIST / "zero1", tmp_path, "z1")
    (d / "latest").write_text("global_step9")
    refused(d, tmp_path, "global_step9")
    assert oracle_refuses(d)


def test_folder_without_latest_points_at_its_tag_folder(tmp_path):
    d = copy(DIST / "zero1", tmp_path, "z1")
    (d / "latest").unlink()
    refused(d, tmp_path, "global_step2")
    assert oracle_refuses(d)


def test_latest_is_read_stripped(tmp_path):
    d = copy(DIST / "zero2", tmp_path, "z2")
    (d / "latest").write_text("\n  global_step2 \n")
    assert run_json("keys", d) == run_json("keys", DIST / "zero2")


def test_second_model_file_at_stage_1_is_refused(tmp_path):
    # Model parallelism writes mp_rank_01_model_states.pt; zero_to_fp32 reads only the first model file at stage 1/2,
    # which would leave the other model-parallel ranks' tensors out: ckpt refuses instead.
    d = copy(DIST / "zero1", tmp_path, "z1")
    tagdir = d / tag_of(d)
    shutil.copy(tagdir / "mp_rank_00_model_states.pt", tagdir / "mp_rank_01_model_states.pt")
    refused(d, tmp_path, "mp_rank_00_model_states.pt")


def test_model_folder_with_deepspeed_state_still_reads_its_weights(tmp_path):
    # A transformers Trainer checkpoint saved with DeepSpeed holds both the model's weights (what from_pretrained
    # loads) and DeepSpeed's latest + tag folder: the folder is read as before, through its weights file; the tag
    # folder reads as ZeRO.
    from safetensors.torch import save_file
    d = tmp_path / "checkpoint-2"
    d.mkdir()
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, d / "model.safetensors")
    before = run_json("keys", d)
    shutil.copytree(DIST / "zero2" / "global_step2", d / "global_step2")
    shutil.copy(DIST / "zero2" / "latest", d / "latest")
    assert run_json("keys", d) == before
    assert run_json("keys", d / "global_step2") == run_json("keys", DIST / "zero2")
