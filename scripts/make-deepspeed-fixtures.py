#!/usr/bin/env python3
"""Write fixtures/distributed/zero*: DeepSpeed ZeRO checkpoints written by DeepSpeed's own engine.save_checkpoint.

    PATH=$PWD/.venv-ds/bin:$PATH DS_ACCELERATOR=cpu .venv-ds/bin/python scripts/make-deepspeed-fixtures.py [OUTDIR]

(.venv-ds is made by scripts/setup: torch 2.13.0+cpu, deepspeed 0.19.8, ninja, numpy. ninja must be on PATH: DeepSpeed
JIT-builds its CPU shared-memory comm op at start.) Default OUTDIR: fixtures/distributed/.

Each run is real training on CPU: torch.multiprocessing.spawn of N processes, `deepspeed.init_distributed("gloo")`,
a torch AdamW passed to `deepspeed.initialize` (DeepSpeed's CPU Adam op is not built), 2 steps, then
`engine.save_checkpoint(OUT, tag="global_step2")` on every rank. Nothing here writes a ZeRO file itself.
(docs/formats-dcp-deepspeed.md section 4.2 has the recipe, section 2 the layout.)

- zero1/, zero2/, zero3/   2 ranks, bf16, ZeRO stage 1, 2, 3.
- zero3-fp32-ws4/          4 ranks, fp32 (no bf16), stage 3.

The model has odd sizes (an 11x5 embedding: partitions need padding), an lm head tied to the embedding (DeepSpeed
records it in `shared_params`), a frozen Linear (`frozen_param_fragments` at stages 2 and 3; stage 1 drops it), an
fp32 buffer and an int64 buffer. The folder keeps `latest`; the recovery scripts DeepSpeed copies in
(zero_to_fp32.py, zero_to_torch.py: code, 38 KB) are deleted.

Values are deterministic (seed 0 on every rank, batches seeded by rank); the files are not byte-identical across
runs (ds_config and timing-dependent fields).
"""

import os
import shutil
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "global_step2"
VOCAB, DIM = 11, 5


def worker(rank, ws, stage, bf16, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(ws), LOCAL_WORLD_SIZE=str(ws), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)

    class TiedLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, DIM)
            self.lin = torch.nn.Linear(DIM, DIM)
            self.frozen = torch.nn.Linear(DIM, 3)
            self.head = torch.nn.Linear(DIM, VOCAB, bias=False)
            self.head.weight = self.emb.weight  # tied
            self.frozen.requires_grad_(False)
            self.register_buffer("buf", torch.arange(7.0) / 8)  # fp32 buffer
            self.register_buffer("ibuf", torch.arange(3) * 5)  # int64 buffer

        def forward(self, x):
            h = self.lin(self.emb(x))
            logits = self.head(h).float()
            side = self.frozen(h).float().sum() * 0  # the frozen layer is used, gets no gradient
            return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x.reshape(-1)) + side

    model = TiedLM()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    cfg = {"train_batch_size": ws, "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
           "steps_per_print": 1000}
    if bf16:
        cfg["bf16"] = {"enabled": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg, model_parameters=params)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(2):
        loss = engine(torch.randint(0, VOCAB, (1, 6), generator=gen))
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(out, tag=TAG)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


RUNS = [  # folder, stage, bf16, world size
    ("zero1", 1, True, 2),
    ("zero2", 2, True, 2),
    ("zero3", 3, True, 2),
    ("zero3-fp32-ws4", 3, False, 4),
]


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fixtures", "distributed"))
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="zero-fixtures-")
    try:
        for i, (name, stage, bf16, ws) in enumerate(RUNS):
            t = time.time()
            path = os.path.join(work, name)
            mp.spawn(worker, args=(ws, stage, bf16, path, 29740 + i), nprocs=ws, join=True)
            for script in ("zero_to_fp32.py", "zero_to_torch.py"):  # copies of DeepSpeed's code, not data
                if os.path.exists(os.path.join(path, script)):
                    os.remove(os.path.join(path, script))
            dest = os.path.join(out, name)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(path, dest)
            files = [os.path.join(r, f) for r, _, fs in os.walk(dest) for f in fs]
            print(f"{name}: {len(files)} files, {sum(map(os.path.getsize, files))} bytes, {time.time() - t:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
