#!/usr/bin/env python3
"""DeepSpeed ZeRO folders made the ways users make them (not the ways scripts/make-deepspeed-fixtures.py does).

    PATH=/work/main/.venv-ds/bin:$PATH DS_ACCELERATOR=cpu /work/main/.venv-ds/bin/python scripts/stranger/make_ds.py [OUT] [case ...]

Default OUT /tmp/stranger/ds. Each case: torch.multiprocessing.spawn, deepspeed.init_distributed("gloo"), a torch
optimizer passed in, 2 real steps, engine.save_checkpoint on every rank.
- z2-fp16-rr      ZeRO-2, fp16 (loss scaling), "round_robin_gradients": true, 2 ranks.
- z2-groups       ZeRO-2 fp32, two optimizer param groups (different lr / weight decay), a frozen layer, 2 ranks.
- z1-groups-bf16  ZeRO-1 bf16, two param groups, 2 ranks.
- z3-ws3-tag      ZeRO-3 bf16, 3 ranks, save_checkpoint(tag="best-ckpt", client_state={...}), two param groups.
- z2-exclude      ZeRO-2 bf16, save_checkpoint(exclude_frozen_parameters=True) with a frozen layer.
- z3-exclude      ZeRO-3 bf16, save_checkpoint(exclude_frozen_parameters=True) with a frozen layer, 2 ranks.
- z0-bf16 / z0-fp32  ZeRO stage 0 (bf16: DeepSpeed's BF16_Optimizer; fp32: the torch optimizer as is), 2 ranks.
- z3-offload      ZeRO-3 bf16 with offload_optimizer and offload_param to cpu (a torch AdamW), 2 ranks.
- z2-two-saves    ZeRO-2, saved at step 1 (tag global_step1) and step 2 (global_step2) in one folder; latest -> 2.
"""
import os
import shutil
import sys
import time

import torch
import torch.multiprocessing as mp

V, D = 11, 6


def make_model(frozen=True):
    class M(torch.nn.Module):
        def __init__(s):
            super().__init__()
            s.emb = torch.nn.Embedding(V, D)
            s.l1 = torch.nn.Linear(D, 7)
            s.norm = torch.nn.LayerNorm(7)
            s.l2 = torch.nn.Linear(7, D)
            s.fz = torch.nn.Linear(D, 3)
            s.head = torch.nn.Linear(D, V, bias=False)
            if frozen:
                s.fz.requires_grad_(False)

        def forward(s, x):
            h = s.l2(s.norm(s.l1(s.emb(x))))
            return torch.nn.functional.cross_entropy(s.head(h).float().reshape(-1, V), x.reshape(-1)) \
                + s.fz(h).float().sum() * 0
    return M()


def worker(rank, ws, case, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(ws), LOCAL_WORLD_SIZE=str(ws), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    m = make_model()
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if "norm" in n or n.endswith("bias")], "weight_decay": 0.0, "lr": 3e-3},
              {"params": [p for n, p in named if not ("norm" in n or n.endswith("bias"))], "weight_decay": 0.1}]
    stage = {"z2-fp16-rr": 2, "z2-groups": 2, "z1-groups-bf16": 1, "z3-ws3-tag": 3, "z2-exclude": 2,
             "z3-exclude": 3, "z2-two-saves": 2, "z0-bf16": 0, "z0-fp32": 0, "z3-offload": 3}[case]
    cfg = {"train_batch_size": ws, "train_micro_batch_size_per_gpu": 1, "steps_per_print": 1000,
           "zero_optimization": {"stage": stage}}
    if case == "z2-fp16-rr":
        # DeepSpeed's CPU accelerator says fp16 is unsupported (engine._do_sanity_check); torch 2.13 runs fp16 Linear
        # on CPU, so the check is lifted to get the fp16 ZeRO files (fp16_zero_pp_rank_*, the loss scaler).
        from deepspeed.accelerator import get_accelerator
        get_accelerator().is_fp16_supported = lambda: True
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 8}
        cfg["zero_optimization"]["round_robin_gradients"] = True
    elif case == "z3-offload":
        cfg["zero_optimization"].update({"offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}})
        cfg["zero_force_ds_cpu_optimizer"] = False
        cfg["bf16"] = {"enabled": True}
    elif case in ("z1-groups-bf16", "z3-ws3-tag", "z2-exclude", "z3-exclude", "z0-bf16"):
        cfg["bf16"] = {"enabled": True}
    if case in ("z2-groups", "z1-groups-bf16", "z3-ws3-tag"):
        opt = torch.optim.AdamW(groups, lr=1e-2)
        params = groups
    else:
        params = [p for _, p in named]
        opt = torch.optim.AdamW(params, lr=1e-2)
    engine, *_ = deepspeed.initialize(model=m, optimizer=opt, config=cfg, model_parameters=params)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(2):
        loss = engine(torch.randint(0, V, (1, 6), generator=gen))
        engine.backward(loss)
        engine.step()
        if case == "z2-two-saves":
            engine.save_checkpoint(out, tag=f"global_step{step + 1}")
    if case == "z3-ws3-tag":
        engine.save_checkpoint(out, tag="best-ckpt", client_state={"epoch": 3, "note": "hello", "ids": [1, 2]})
    elif case.endswith("exclude"):
        engine.save_checkpoint(out, exclude_frozen_parameters=True)
    elif case != "z2-two-saves":
        engine.save_checkpoint(out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


CASES = {"z2-fp16-rr": 2, "z2-groups": 2, "z1-groups-bf16": 2, "z3-ws3-tag": 3, "z2-exclude": 2, "z3-exclude": 2,
         "z2-two-saves": 2, "z0-bf16": 2, "z0-fp32": 2, "z3-offload": 2}


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "/tmp/stranger/ds")
    os.makedirs(out, exist_ok=True)
    for i, name in enumerate(sys.argv[2:] or list(CASES)):
        path = os.path.join(out, name)
        shutil.rmtree(path, ignore_errors=True)
        t = time.time()
        try:
            mp.spawn(worker, args=(CASES[name], name, path, 29900 + i), nprocs=CASES[name], join=True)
            print(f"{name}: ok in {time.time() - t:.1f}s: {sorted(os.listdir(path))}", flush=True)
        except Exception as e:
            print(f"{name}: FAILED to make: {type(e).__name__}: {str(e)[-1500:]}", flush=True)


if __name__ == "__main__":
    main()
