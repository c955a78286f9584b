#!/usr/bin/env python3
"""Hostile / inconsistent `.metadata` edits of a real DCP folder; ckpt consolidate must refuse each with one line,
exit 2, nothing written (or, where torch accepts, give torch's answer). Usage:
    .venv/bin/python scripts/stranger/damage_dcp_metadata.py /tmp/stranger/dcp/fsdp2-options
"""
import os, pickle, shutil, subprocess, sys, tempfile
import torch

CKPT = os.environ.get("CKPT_BIN", "/work/wt-stranger/.build/debug/ckpt")
src = sys.argv[1]


def model_items(m):
    return [(i, s) for i, s in m.storage_data.items() if i.fqn.startswith("model.") and i.offset is not None]


def abs_path(m):
    i, s = model_items(m)[0]; s.relative_path = "/etc/hostname"
def parent_path(m):
    i, s = model_items(m)[0]; s.relative_path = "../" + os.path.basename(src) + "/" + s.relative_path
def huge_offset(m):
    i, s = model_items(m)[0]; s.offset = 2 ** 62
def negative_length(m):
    i, s = model_items(m)[0]; s.length = -5
def negative_chunk_offset(m):
    v = m.state_dict_metadata["model.tok_embeddings.weight"]; c = v.chunks[0]
    c.offsets = torch.Size([-1] + list(c.offsets[1:]))
def negative_size(m):
    v = m.state_dict_metadata["model.output.weight"]; v.size = torch.Size([-13, 6])
def same_path_twice(m):
    m.planner_data["model.output.weight"] = m.planner_data["model.tok_embeddings.weight"]
def path_into_tensor(m):  # a path that goes through a tensor: ('model', 'output.weight', 'x')
    m.planner_data["model.layers.0.wq.weight"] = ("model", "output.weight", "x")
def planner_missing(m):
    del m.planner_data["model.output.weight"]
def storage_missing(m):
    i, s = model_items(m)[0]; del m.storage_data[i]
def two_chunks_same_item(m):  # two chunks of one tensor point at the same stored bytes
    v = m.state_dict_metadata["model.tok_embeddings.weight"]
    items = [(i, s) for i, s in m.storage_data.items() if i.fqn == "model.tok_embeddings.weight"]
    (i0, s0), (i1, s1) = items[0], items[1]
    m.storage_data[i1] = s0
def huge_size(m):
    v = m.state_dict_metadata["model.output.weight"]; v.size = torch.Size([2 ** 40, 2 ** 40])
    v.chunks[-1].sizes = torch.Size([2 ** 40 - v.chunks[-1].offsets[0], 2 ** 40])


for fn in [abs_path, parent_path, huge_offset, negative_length, negative_chunk_offset, negative_size, same_path_twice,
           path_into_tensor, planner_missing, storage_missing, two_chunks_same_item, huge_size]:
    tmp = tempfile.mkdtemp(prefix="dcpmd-")
    d = os.path.join(tmp, os.path.basename(src))
    shutil.copytree(src, d)
    m = pickle.load(open(os.path.join(d, ".metadata"), "rb"))
    fn(m)
    pickle.dump(m, open(os.path.join(d, ".metadata"), "wb"))
    out = os.path.join(tmp, "o.safetensors")
    try:
        p = subprocess.run([CKPT, "consolidate", d, out], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        print(f"BUG {fn.__name__}: hangs"); continue
    lines = p.stderr.strip().splitlines()
    ok = p.returncode == 2 and len(lines) == 1 and lines[0].startswith("ckpt: ") and not os.path.exists(out)
    if fn is planner_missing:  # torch puts the item at the root under its flat name; so may ckpt
        ok = ok or p.returncode == 0
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    try:
        dcp_to_torch_save(d, os.path.join(tmp, "t.pt")); tv = "torch accepts"
    except BaseException as e:
        tv = "torch refuses (" + type(e).__name__ + ")"
    print(("OK  " if ok else "BUG ") + f"{fn.__name__}: exit {p.returncode}: {p.stderr.strip()[:260]} {p.stdout.strip()[:120]} | {tv}",
          flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
