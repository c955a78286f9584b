#!/usr/bin/env python3
"""Semantic damage to ZeRO folders (files re-saved by torch.save with one field changed), then ckpt consolidate and
DeepSpeed's zero_to_fp32 on each copy:

    PATH=/work/main/.venv-ds/bin:$PATH DS_ACCELERATOR=cpu /work/main/.venv-ds/bin/python scripts/stranger/damage_ds.py \
        /tmp/stranger/ds/z2-groups /tmp/stranger/ds/z3-ws3-tag

Prints per damage: ckpt's exit code and stderr, whether zero_to_fp32 accepted it, and whether ckpt's output (when
written) equals zero_to_fp32's. ckpt must refuse (exit 2, one line, nothing written) or agree with zero_to_fp32 when
zero_to_fp32 accepts.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict

import torch

CKPT = os.environ.get("CKPT_BIN", "/work/wt-stranger/.build/debug/ckpt")


def tagdir(d):
    return os.path.join(d, open(os.path.join(d, "latest")).read().strip())


def edit(path, fn):
    sd = torch.load(path, weights_only=False)
    fn(sd)
    torch.save(sd, path)


def shrink_last_shape(d):
    f = glob.glob(os.path.join(tagdir(d), "*model_states.pt"))[0]

    def fn(sd):
        for g in sd["param_shapes"]:
            last = list(g)[-1]
            s = list(g[last])
            s[-1] -= 1
            g[last] = torch.Size(s)
            return
    for f in glob.glob(os.path.join(tagdir(d), "*model_states.pt")):
        edit(f, fn)


def grow_first_shape(d):
    def fn(sd):
        g = sd["param_shapes"][0]
        first = list(g)[0]
        s = list(g[first])
        s[0] += 1
        g[first] = torch.Size(s)
    for f in glob.glob(os.path.join(tagdir(d), "*model_states.pt")):
        edit(f, fn)


def swap_two_shapes(d):  # same numel, different order: zero_to_fp32 cannot notice
    def fn(sd):
        for g in sd["param_shapes"]:
            ks = list(g)
            if len(ks) >= 2:
                a, b = ks[0], ks[1]
                items = [(b if k == a else a if k == b else k, g[b] if k == a else g[a] if k == b else g[k])
                         for k in ks]
                g.clear()
                g.update(OrderedDict(items))
                return
    for f in glob.glob(os.path.join(tagdir(d), "*model_states.pt")):
        edit(f, fn)


def shorten_partition(d):
    f = sorted(glob.glob(os.path.join(tagdir(d), "*optim_states.pt")))[-1]

    def fn(sd):
        o = sd["optimizer_state_dict"]
        key = "single_partition_of_fp32_groups" if "single_partition_of_fp32_groups" in o else "fp32_flat_groups"
        o[key][0] = o[key][0][:-1].clone()
    edit(f, fn)


def change_zero_stage(d):
    def fn(sd):
        o = sd["optimizer_state_dict"]
        o["zero_stage"] = 1 if int(o["zero_stage"]) != 1 else 2
    for f in glob.glob(os.path.join(tagdir(d), "*optim_states.pt")):
        edit(f, fn)


def drop_shared(d):
    def fn(sd):
        sd["shared_params"] = {"head2.weight": "no.such.param"}
    for f in glob.glob(os.path.join(tagdir(d), "*model_states.pt")):
        edit(f, fn)


def paddings_changed(d):
    def fn(sd):
        o = sd["optimizer_state_dict"]
        if "group_paddings" in o:
            o["group_paddings"] = [p + 2 for p in o["group_paddings"]]
        else:
            raise ValueError("no group_paddings (stage 3)")
    for f in glob.glob(os.path.join(tagdir(d), "*optim_states.pt")):
        edit(f, fn)


DAMAGES = [shrink_last_shape, grow_first_shape, swap_two_shapes, shorten_partition, change_zero_stage, drop_shared,
           paddings_changed]

ZERO = """
import sys, torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint as f
torch.save(f(sys.argv[1]), sys.argv[2])
"""


def main():
    for src in sys.argv[1:]:
        for dmg in DAMAGES:
            tmp = tempfile.mkdtemp(prefix="dsdmg-")
            d = os.path.join(tmp, os.path.basename(src))
            shutil.copytree(src, d)
            try:
                dmg(d)
            except Exception as e:
                print(f"{os.path.basename(src)} {dmg.__name__}: not applied ({e})")
                continue
            out = os.path.join(tmp, "o.pt")
            p = subprocess.run([CKPT, "consolidate", d, out], capture_output=True, text=True)
            ref = os.path.join(tmp, "ref.pt")
            z = subprocess.run([sys.executable, "-c", ZERO, d, ref], capture_output=True, text=True)
            zmsg = "zero_to_fp32 accepts" if z.returncode == 0 else \
                "zero_to_fp32 refuses (" + (z.stderr.strip().splitlines() or ["?"])[-1][:150] + ")"
            verdict = ""
            if p.returncode == 0:
                if z.returncode == 0:
                    a, b = torch.load(out, weights_only=True), torch.load(ref, weights_only=True)
                    same = list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in b)
                    verdict = "ckpt exit 0, same as zero_to_fp32" if same else "BUG ckpt exit 0, differs from zero_to_fp32"
                else:
                    verdict = "BUG ckpt exit 0 where zero_to_fp32 refuses"
            else:
                lines = p.stderr.strip().splitlines()
                ok = p.returncode == 2 and len(lines) == 1 and not os.path.exists(out)
                verdict = ("ckpt refuses: " if ok else "BUG ckpt refusal not one line/exit 2: ") + p.stderr.strip()[:300]
            print(f"{os.path.basename(src)} {dmg.__name__}: {verdict}; {zmsg}", flush=True)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
