#!/usr/bin/env python3
"""accelerate's FSDP save_state on CPU, 2 processes (torch.multiprocessing.spawn with torchrun's env variables):

    .venv/bin/python scripts/stranger/make_accelerate.py OUT [1|2]     # FSDP version (default 2)

Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(state_dict_type="SHARDED_STATE_DICT")), 2 AdamW steps, then
accelerator.save_state(OUT): OUT/pytorch_model_fsdp_0/ and OUT/optimizer_0/ are DCP folders (accelerate's
utils/fsdp_utils.py save_fsdp_model / save_fsdp_optimizer), beside random_states_*.pkl.
"""
import os
import sys

import torch
import torch.multiprocessing as mp

V, D = 13, 6


def worker(rank, ws, out, version, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(ws), LOCAL_WORLD_SIZE=str(ws), ACCELERATE_USE_FSDP="true")
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import torchvision_ops
    torchvision_ops.declare()
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin
    plugin = FullyShardedDataParallelPlugin(state_dict_type="SHARDED_STATE_DICT", fsdp_version=version,
                                            cpu_ram_efficient_loading=False)
    acc = Accelerator(fsdp_plugin=plugin)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(V, D), torch.nn.Linear(D, 10), torch.nn.GELU(),
                                torch.nn.Linear(10, V))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
    if rank == 0:
        print("distributed_type", acc.distributed_type, type(model).__name__)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(2):
        x = torch.randint(0, V, (2, 6), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
    acc.save_state(out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    out = sys.argv[1]
    version = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    mp.spawn(worker, args=(2, out, version, 29960 + version), nprocs=2, join=True)
    print(sorted(os.listdir(out)))
