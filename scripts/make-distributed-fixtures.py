#!/usr/bin/env python3
"""Write fixtures/distributed/dcp-* and hf-distributed-*: checkpoints written by torch.distributed.checkpoint itself.

    .venv/bin/python scripts/make-distributed-fixtures.py [OUTDIR]     (default: fixtures/distributed/)

Each folder is one `dcp.save` run by 2 or 4 real processes (torch.multiprocessing.spawn, the gloo backend on
127.0.0.1, CPU), as FSDP2 / torchtitan training saves them (docs/formats-dcp-deepspeed.md section 4.1 has the recipe
and the format facts):

- dcp-fsdp2-ws2/        a small transformer (embedding, 1 block of LayerNorm + q/k/v/o attention + MLP, final norm,
                        untied lm head; odd sizes so FSDP2's dim-0 shards are uneven), fp32, `fully_shard` per block
                        and at the root, torch.optim.Adam, 3 real steps, `get_state_dict(model, opt)`, saved as
                        {"model": msd, "optim": osd, "train_state": {"step": 3, "tokens_seen": ...}}.
- dcp-fsdp2-bf16-ws4/   the same with 4 processes and the model in bfloat16 (a 5-row tensor over 4 ranks leaves one
                        rank an empty shard).
- dcp-dtensor-ws2/      DTensors placed by hand: Shard(0) (uneven rows), Shard(1) (column boxes), Replicate(), bf16,
                        fp32 and int64, a 0-d tensor, nested dicts, a list of tensors, a list of ints, a plain-data
                        dict, and a plain tensor that is a transposed view (`big.t()`, saved with its strides).
- dcp-safetensors-ws2/  the FSDP2 model of dcp-fsdp2-ws2 (same run, same tensors) and train_state saved with
                        FileSystemWriter(serialization_format=SerializationFormat.SAFETENSORS). torch 2.13's own
                        FileSystemReader cannot read it back (it torch.loads the safetensors bytes): its oracle is
                        dcp-fsdp2-ws2's. A rank's file is its bytes items (torch.save zips, at the offsets .metadata
                        gives) followed by one safetensors blob of its chunks keyed by fqn, with DCP_SHARDING_INFO.
- hf-distributed-ws2/   HuggingFaceStorageWriter(save_distributed=True): per-rank safetensors with DCP_SHARDING_INFO,
                        no .metadata (the FSDP2 model's state dict plus a Shard(1) and a replicated DTensor).
- dcp-threads-ws2/      FileSystemWriter(thread_count=2) (two .distcp files per rank) of dcp-fsdp2-ws2's model.
- dcp-multifile-ws2/    FileSystemWriter(single_file_per_rank=False) (one .distcp per item) of the same.
(The writer variants hold {"model", "train_state"} only, to stay small: the same tensors as dcp-fsdp2-ws2's model.)
- dcp-zstd-ws2/         FileSystemWriter(_extensions=[ZStandard()]) when torch's zstd extension works here (it needs
                        the `zstandard` package or Python 3.14's compression.zstd); skipped with a message otherwise.

Tensor values are deterministic (fixed seeds; each rank's batch is seeded by its rank); the files are not
byte-identical across runs because DCP records a fresh save_id (a uuid) and the folder path in `.metadata`.
"""

import os
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint import FileSystemWriter, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VOCAB, DIM, HIDDEN, SEQ = 13, 5, 11, 6  # odd sizes: FSDP2's dim-0 shards are uneven


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        # Few biases: every parameter is one .distcp item per rank and per Adam state (~1.5 KB of zip each).
        self.attn_norm = nn.LayerNorm(DIM)
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM, bias=False) for _ in range(4))
        self.mlp_norm = nn.LayerNorm(DIM, bias=False)
        self.up = nn.Linear(DIM, HIDDEN)
        self.down = nn.Linear(HIDDEN, DIM, bias=False)

    def forward(self, x):
        h = self.attn_norm(x)
        att = F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h), is_causal=True)
        x = x + self.o(att)
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([Block()])
        self.norm = nn.LayerNorm(DIM, bias=False)
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens):
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


def setup(rank, ws, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ws)
    return init_device_mesh("cpu", (ws,))


def trained_fsdp2(rank, mesh, dtype, steps=3):
    """The TinyLM sharded with FSDP2 as torchtitan does (each block, then the root), trained `steps` Adam steps on a
    batch seeded by the rank. Same initial weights on every rank (seed 0), as fully_shard expects."""
    torch.manual_seed(0)
    model = TinyLM().to(dtype)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=gen)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    msd, osd = get_state_dict(model, opt)
    return msd, osd, steps * 2 * SEQ * mesh.size()


def fsdp2_worker(rank, ws, port, out, dtype, variants):
    """variants: (folder, writer factory, with the optimizer state?)."""
    mesh = setup(rank, ws, port)
    msd, osd, tokens = trained_fsdp2(rank, mesh, dtype)
    for name, make_writer, with_optim in variants:
        sd = {"model": msd, "optim": osd} if with_optim else {"model": msd}
        sd["train_state"] = {"step": 3, "tokens_seen": tokens}
        path = os.path.join(out, name)
        dcp.save(sd, storage_writer=make_writer(path), checkpoint_id=path)
    dist.destroy_process_group()


def dtensor_worker(rank, ws, port, out):
    mesh = setup(rank, ws, port)
    gen = torch.Generator().manual_seed(7)  # the same full tensors on every rank
    rows = torch.randn(5, 4, generator=gen)  # Shard(0) over 2 ranks: 3 + 2 rows
    cols = torch.randn(6, 5, generator=gen).bfloat16()  # Shard(1): column boxes (6,3) and (6,2)
    rep = torch.randn(3, 3, generator=gen)
    ids = torch.arange(7 * 3, dtype=torch.int64).reshape(7, 3)  # Shard(0): 4 + 3 rows
    big = torch.randn(4, 7, generator=gen)
    sd = {
        "model": {
            "embed.weight": distribute_tensor(rows, mesh, [Shard(0)]),
            "proj.weight": distribute_tensor(cols, mesh, [Shard(1)]),
            "norm.weight": distribute_tensor(rep, mesh, [Replicate()]),
            "pos_ids": distribute_tensor(ids, mesh, [Shard(0)]),
            "scale": torch.tensor(0.125),  # 0-d
            "transposed": big.t(),  # a plain tensor, saved with strides (1, 7) (docs section 1.3)
            "bf16_cols": distribute_tensor(torch.randn(3, 9, generator=gen).bfloat16(), mesh, [Shard(1)]),
        },
        "aux": {
            "ema": {"decay": torch.tensor(0.999, dtype=torch.float64),
                    "shadow": {"w": distribute_tensor(rows * 0.5, mesh, [Shard(0)])}},
            "history": [torch.arange(3.0), torch.ones(2, 2, dtype=torch.bfloat16)],
        },
        "milestones": [10, 20, 30],
        "config": {"name": "tiny", "lr": 0.01, "betas": (0.9, 0.95), "warmup": None},
        "step": 7,
    }
    dcp.save(sd, checkpoint_id=os.path.join(out, "dcp-dtensor-ws2"))
    dist.destroy_process_group()


def hf_worker(rank, ws, port, out):
    mesh = setup(rank, ws, port)
    msd, _, _ = trained_fsdp2(rank, mesh, torch.float32, steps=2)
    gen = torch.Generator().manual_seed(11)
    sd = dict(msd)
    sd["extra.cols"] = distribute_tensor(torch.randn(4, 7, generator=gen).bfloat16(), mesh, [Shard(1)])
    sd["extra.rep"] = distribute_tensor(torch.randn(3, generator=gen), mesh, [Replicate()])
    dcp.save(sd, storage_writer=HuggingFaceStorageWriter(path=os.path.join(out, "hf-distributed-ws2"),
                                                         save_distributed=True))
    dist.destroy_process_group()


def zstd_available():
    try:
        from torch.distributed.checkpoint._extension import ZStandard

        ZStandard()
        ZStandard().transform_to(__import__("io").BytesIO()).write(b"x")
        return True
    except Exception as e:  # noqa: BLE001 (a missing optional package shows up as several error types)
        print(f"skipped dcp-zstd-ws2: torch's ZStandard extension does not work here ({type(e).__name__}: {e})")
        return False


def writer_default(path):
    return FileSystemWriter(path)


def writer_safetensors(path):
    from torch.distributed.checkpoint.filesystem import SerializationFormat

    return FileSystemWriter(path, serialization_format=SerializationFormat.SAFETENSORS)


def writer_threads(path):
    return FileSystemWriter(path, thread_count=2)


def writer_multifile(path):
    return FileSystemWriter(path, single_file_per_rank=False)


def writer_zstd(path):
    from torch.distributed.checkpoint._extension import ZStandard

    return FileSystemWriter(path, _extensions=[ZStandard()])


def spawn(fn, ws, *args):
    t = time.time()
    mp.spawn(fn, args=(ws, *args), nprocs=ws, join=True)
    return time.time() - t


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fixtures", "distributed"))
    os.makedirs(out, exist_ok=True)
    # The writer variants hold the model only (and train_state): fewer items, a few tens of KB each.
    ws2 = [("dcp-fsdp2-ws2", writer_default, True), ("dcp-safetensors-ws2", writer_safetensors, False),
           ("dcp-threads-ws2", writer_threads, False), ("dcp-multifile-ws2", writer_multifile, False)]
    if zstd_available():
        ws2.append(("dcp-zstd-ws2", writer_zstd, False))
    names = [n for n, _, _ in ws2] + ["dcp-fsdp2-bf16-ws4", "dcp-dtensor-ws2", "hf-distributed-ws2"]
    # Written in a temp folder and moved in: dcp.save adds to a folder, a rerun must not mix old and new files.
    work = tempfile.mkdtemp(prefix="dcp-fixtures-")
    try:
        took = {}
        took["fsdp2 ws2"] = spawn(fsdp2_worker, 2, 29710, work, torch.float32, ws2)
        took["fsdp2 bf16 ws4"] = spawn(fsdp2_worker, 4, 29711, work, torch.bfloat16,
                                       [("dcp-fsdp2-bf16-ws4", writer_default, True)])
        took["dtensor ws2"] = spawn(dtensor_worker, 2, 29712, work)
        took["hf distributed ws2"] = spawn(hf_worker, 2, 29713, work)
        for name in names:
            dest = os.path.join(out, name)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(os.path.join(work, name), dest)
            files = sorted(os.listdir(dest))
            size = sum(os.path.getsize(os.path.join(dest, f)) for f in files)
            print(f"{name}: {len(files)} files, {size} bytes")
        print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in took.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
