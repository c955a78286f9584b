#!/usr/bin/env python3
"""transformers Trainer + DeepSpeed ZeRO (stage from argv, default 2) on CPU, 2 processes; a tiny GPT-2 (tied head),
save_steps=2: OUT/checkpoint-2/ holds global_step2/ + latest (DeepSpeed) beside the Trainer files.

    PATH=/work/main/.venv-ds/bin:$PATH .venv/bin/python scripts/stranger/make_trainer_ds.py OUT [STAGE]

Does NOT run here (kept as the record of the attempt): on CPU, TrainingArguments counts a world size of 1 while
DeepSpeed counts 2, so DeepSpeed's batch check (train_batch_size == micro * grad_acc * world) and the Trainer's
("ds train_batch_size=4 vs hf train_batch_size (calculated)=2") can never both pass.
"""
import os
import sys

import torch
import torch.multiprocessing as mp


def worker(rank, ws, out, stage):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29981 + stage), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(ws), LOCAL_WORLD_SIZE=str(ws), DS_ACCELERATOR="cpu",
                      ACCELERATE_USE_DEEPSPEED="true")
    sys.path.append("/work/main/.venv-ds/lib/python3.11/site-packages")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import torchvision_ops
    torchvision_ops.declare()
    torch.set_num_threads(1)
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=37, n_positions=12))
    data = [{"input_ids": torch.randint(0, 37, (8,)), "labels": torch.randint(0, 37, (8,))} for _ in range(8)]
    ds = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": stage}, "zero_force_ds_cpu_optimizer": False}
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=2, max_steps=2, save_steps=2,
                             logging_steps=100, report_to=[], deepspeed=ds)
    Trainer(model=model, args=args, train_dataset=data).train()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2), nprocs=2, join=True)
