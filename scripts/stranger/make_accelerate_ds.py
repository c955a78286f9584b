#!/usr/bin/env python3
"""accelerate + DeepSpeed ZeRO-2 on CPU, 2 processes: Accelerator(deepspeed_plugin=...), 4 steps, save_state(OUT)
writes OUT/pytorch_model/ (a ZeRO tag folder), OUT/latest, random_states_*.pkl. Runs in the project venv with
.venv-ds's deepspeed appended to sys.path:

    PATH=/work/main/.venv-ds/bin:$PATH .venv/bin/python scripts/stranger/make_accelerate_ds.py
"""
import os, sys, torch, torch.multiprocessing as mp
def worker(rank, ws, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29977", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ws),
                      LOCAL_WORLD_SIZE=str(ws), DS_ACCELERATOR="cpu", ACCELERATE_USE_DEEPSPEED="true")
    sys.path.append("/work/main/.venv-ds/lib/python3.11/site-packages")
    sys.path.insert(0, "/work/wt-stranger/scripts"); import torchvision_ops; torchvision_ops.declare()
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin
    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config={"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2}, "zero_force_ds_cpu_optimizer": False}))
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Embedding(13, 6), torch.nn.Linear(6, 13))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    dl = torch.utils.data.DataLoader(torch.randint(0, 13, (8, 5)), batch_size=2)
    m, opt, dl = acc.prepare(m, opt, dl)
    print(rank, acc.distributed_type, flush=True)
    for x in dl:
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1]).float().reshape(-1, 13), x[:, 1:].reshape(-1)); acc.backward(loss); opt.step(); opt.zero_grad()
    acc.save_state(out)
if __name__ == "__main__":
    mp.spawn(worker, args=(2, "/tmp/stranger/accds/state"), nprocs=2, join=True)
