#!/usr/bin/env python3
"""DCP folders made the ways users make them (not the ways scripts/make-distributed-fixtures.py does), for issue 15's
stranger test. Writes under OUT (default /tmp/stranger/dcp):

    .venv/bin/python scripts/stranger/make_dcp.py [OUT] [case ...]

Cases (each a real run of torch.multiprocessing.spawn on gloo, CPU):
- fsdp1-sharded     FSDP1 FullyShardedDataParallel, state_dict_type SHARDED_STATE_DICT (ShardedTensor chunks), model +
                    FSDP.optim_state_dict, saved with dcp.save ({"model", "optim"}), 2 ranks.
- fsdp2-options     FSDP2 with get_model_state_dict / get_optimizer_state_dict(StateDictOptions(
                    flatten_optimizer_state_dict=True)), {"model", "optimizer"}, 2 ranks.
- mesh2d            4 ranks, mesh (2, 2): DTensors Shard(0)xShard(1), Shard(1)xShard(0), Shard(0)xReplicate, 3-D.
- fsdp-tp           4 ranks, FSDP2 + tensor parallel (ColwiseParallel/RowwiseParallel) on a (2, 2) mesh: the
                    _StridedShard placements FSDP2+TP gives, model + optimizer.
- async             dcp.async_save of an FSDP2 model + optim, 2 ranks.
- noflatten         DefaultSavePlanner(flatten_state_dict=False): planner_data None, a nested dict saved whole.
- dedup-lowest      DefaultSavePlanner(dedup_save_to_lowest_rank=True) with replicated tensors, 2 ranks.
- torch-save-to-dcp format_utils.torch_save_to_dcp of a torch.save'd nested checkpoint.
- torchtitan        torchtitan's layout: model keys at the root, "optimizer" (flattened), "lr_scheduler",
                    "dataloader", "train_state" beside, 2 ranks FSDP2.
- leaves            int/str/None/list/tuple/float/bool leaves, empty tensors, 0-d tensors, int8/bool/complex/f16
                    tensors, one process.
- safetensors-tt    torchtitan layout saved with SerializationFormat.SAFETENSORS.
"""
import os
import shutil
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

VOCAB, DIM = 13, 6


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq = nn.Linear(DIM, DIM, bias=False)
        self.w1 = nn.Linear(DIM, 10)
        self.w2 = nn.Linear(10, DIM)
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x):
        x = x + self.wq(self.norm(x))
        return x + self.w2(F.relu(self.w1(x)))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([Block(), Block()])
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, t):
        x = self.tok_embeddings(t)
        for l in self.layers:
            x = l(x)
        return self.output(x)


def setup(rank, ws, port, mesh_shape=None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ws)
    return init_device_mesh("cpu", mesh_shape or (ws,), mesh_dim_names=None if mesh_shape is None else ("dp", "tp"))


def train(model, opt, rank, steps=2):
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        t = torch.randint(0, VOCAB, (2, 6), generator=gen)
        loss = F.cross_entropy(model(t[:, :-1]).float().reshape(-1, VOCAB), t[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()


def fsdp2_model(mesh):
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    m = TinyLM()
    for l in m.layers:
        fully_shard(l, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def w_fsdp1(rank, ws, port, out):
    setup(rank, ws, port)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, StateDictType
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    torch.manual_seed(0)
    m = FSDP(TinyLM(), auto_wrap_policy=ModuleWrapPolicy({Block}), device_id=torch.device("cpu"),
             use_orig_params=True)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    train(m, opt, rank)
    with FSDP.state_dict_type(m, StateDictType.SHARDED_STATE_DICT):
        sd = {"model": m.state_dict(), "optim": FSDP.optim_state_dict(m, opt)}
        dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()


def w_fsdp2_options(rank, ws, port, out):
    mesh = setup(rank, ws, port)
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    m = fsdp2_model(mesh)
    opt = torch.optim.AdamW([{"params": [p for n, p in m.named_parameters() if "norm" in n], "weight_decay": 0.0},
                             {"params": [p for n, p in m.named_parameters() if "norm" not in n]}], lr=1e-2)
    train(m, opt, rank)
    opts = StateDictOptions(flatten_optimizer_state_dict=True)
    sd = {"model": get_model_state_dict(m), "optimizer": get_optimizer_state_dict(m, opt, options=opts)}
    dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()


def w_mesh2d(rank, ws, port, out):
    mesh = setup(rank, ws, port, (2, 2))
    from torch.distributed.tensor import distribute_tensor, Shard, Replicate
    a = torch.arange(7 * 9, dtype=torch.float32).reshape(7, 9)
    b = torch.arange(5 * 3 * 4, dtype=torch.float32).reshape(5, 3, 4).bfloat16()
    sd = {"s0s1": distribute_tensor(a, mesh, [Shard(0), Shard(1)]),
          "s1s0": distribute_tensor(a, mesh, [Shard(1), Shard(0)]),
          "s0s0": distribute_tensor(a, mesh, [Shard(0), Shard(0)]),
          "s0r": distribute_tensor(a, mesh, [Shard(0), Replicate()]),
          "rs1": distribute_tensor(a, mesh, [Replicate(), Shard(1)]),
          "b3d": distribute_tensor(b, mesh, [Shard(2), Shard(0)]),
          "tiny": distribute_tensor(torch.arange(3.), mesh, [Shard(0), Shard(0)])}  # 3 rows over 4: an empty chunk
    dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()


def w_fsdp_tp(rank, ws, port, out):
    mesh = setup(rank, ws, port, (2, 2))
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    from torch.distributed.checkpoint.state_dict import get_state_dict
    torch.manual_seed(0)
    m = TinyLM()
    for l in m.layers:
        parallelize_module(l, mesh["tp"], {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    for l in m.layers:
        fully_shard(l, mesh=mesh["dp"])
    fully_shard(m, mesh=mesh["dp"])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    train(m, opt, rank // 2)  # same batch on both tp ranks
    msd, osd = get_state_dict(m, opt)
    placements = {k: str(v.placements) for k, v in msd.items() if hasattr(v, "placements")}
    if rank == 0:
        print("fsdp-tp placements:", placements)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
    dist.destroy_process_group()


def w_async(rank, ws, port, out):
    mesh = setup(rank, ws, port)
    from torch.distributed.checkpoint.state_dict import get_state_dict
    m = fsdp2_model(mesh)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    train(m, opt, rank)
    msd, osd = get_state_dict(m, opt)
    fut = dcp.async_save({"model": msd, "optim": osd, "step": 2}, checkpoint_id=out)
    fut.result()
    dist.destroy_process_group()


def w_noflatten(rank, ws, port, out):
    setup(rank, ws, port)
    from torch.distributed.checkpoint import DefaultSavePlanner
    torch.manual_seed(0)
    m = TinyLM()
    sd = dict(m.state_dict())
    sd["extra"] = {"epoch": 4, "t": torch.arange(3.)}  # a nested dict: saved whole as one bytes item
    dcp.save(sd, checkpoint_id=out, planner=DefaultSavePlanner(flatten_state_dict=False))
    dist.destroy_process_group()


def w_dedup(rank, ws, port, out):
    mesh = setup(rank, ws, port)
    from torch.distributed.checkpoint import DefaultSavePlanner
    from torch.distributed.tensor import distribute_tensor, Shard, Replicate
    torch.manual_seed(0)
    m = TinyLM()
    sd = {"model": dict(m.state_dict()),
          "sharded": distribute_tensor(torch.arange(10.).reshape(5, 2), mesh, [Shard(0)]),
          "rep": distribute_tensor(torch.arange(4.), mesh, [Replicate()])}
    dcp.save(sd, checkpoint_id=out, planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True))
    dist.destroy_process_group()


def w_torchtitan(rank, ws, port, out, safetensors=False):
    mesh = setup(rank, ws, port)
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    from torch.distributed.checkpoint import FileSystemWriter
    m = fsdp2_model(mesh)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    train(m, opt, rank)
    sched.step()
    # torchtitan checkpoint.py: states = {"model": ModelWrapper, "optimizer": OptimizersContainer, "dataloader",
    # "lr_scheduler", "train_state"}, and _flattened_model_states_sd puts the model's keys at the root.
    sd = {"optimizer": get_optimizer_state_dict(m, opt, options=StateDictOptions(flatten_optimizer_state_dict=True)),
          "dataloader": {f"dp_rank_{rank}": b"\x80\x04K\x07."},
          "lr_scheduler": {"lr_scheduler_0": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}},
          "train_state": {"step": 2, "global_avg_losses": [2.5, 2.4], "log_steps": [1, 2]}}
    sd.update(get_model_state_dict(m))
    kw = {}
    if safetensors:
        from torch.distributed.checkpoint.filesystem import SerializationFormat
        kw["storage_writer"] = FileSystemWriter(out, serialization_format=SerializationFormat.SAFETENSORS)
    dcp.save(sd, checkpoint_id=out, **kw)
    dist.destroy_process_group()


def w_safetensors_tt(rank, ws, port, out):
    w_torchtitan(rank, ws, port, out, safetensors=True)


def make_torch_save_to_dcp(out):
    from torch.distributed.checkpoint.format_utils import torch_save_to_dcp
    torch.manual_seed(0)
    m = TinyLM()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    train(m, opt, 0)
    src = out + ".pt"
    torch.save({"state_dict": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, src)
    torch_save_to_dcp(src, out)


def make_leaves(out):
    torch.manual_seed(0)
    sd = {"model": {"w": torch.randn(3, 4), "empty": torch.empty(0, 4), "empty2": torch.zeros(5, 0),
                    "scalar": torch.tensor(2.5), "i8": torch.arange(-4, 4, dtype=torch.int8),
                    "mask": torch.tensor([True, False, True]), "c": torch.randn(2, dtype=torch.complex64),
                    "h": torch.randn(4).half(), "bf": torch.randn(2, 2).bfloat16(), "f64": torch.randn(3).double(),
                    "i64": torch.arange(5), "nan": torch.tensor([float("nan"), -0.0, float("inf")])},
          "meta": {"name": "tiny", "none": None, "list": [1, "two", None, 3.0], "tuple": (1, 2), "flag": True,
                   "nested": {"a": [1, 2], "b": {"c": "d"}}},
          "lst": [torch.arange(2.), torch.arange(3.)],
          "step": 9}
    dcp.save(sd, checkpoint_id=out)


def w_nocollectives(rank, ws, port, out):
    mesh = setup(rank, ws, port)
    from torch.distributed.checkpoint.state_dict import get_state_dict
    m = fsdp2_model(mesh)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    train(m, opt, rank)
    msd, osd = get_state_dict(m, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=out, use_collectives=False)  # one __R.metadata a rank
    dist.destroy_process_group()


def w_hf_consolidated(rank, ws, port, out):
    mesh = setup(rank, ws, port)
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    m = fsdp2_model(mesh)
    # enable_consolidation: shards in OUT/sharded/, consolidated model-0000K-of-0000N.safetensors in OUT
    dcp.save(get_model_state_dict(m), storage_writer=HuggingFaceStorageWriter(
        path=out, save_distributed=True, enable_consolidation=True,
        fqn_to_index_mapping={k: (1 if k.startswith(("tok", "layers.0")) else 2) for k in m.state_dict()}))
    dist.destroy_process_group()


def make_leaves2(out):
    torch.manual_seed(0)
    conv = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    sd = {"model": {"conv.weight": conv, "f8": torch.randn(5).to(torch.float8_e4m3fn),
                    "f8b": torch.randn(2, 3).to(torch.float8_e5m2), "u16": torch.arange(4).to(torch.uint16),
                    "u32": torch.arange(3).to(torch.uint32), "param": torch.nn.Parameter(torch.randn(3)),
                    "big_i": torch.tensor([2 ** 62, -1]), "view": torch.arange(12.).reshape(3, 4)[:, 1:3]}}
    dcp.save(sd, checkpoint_id=out)


def w_hf_gpt2(rank, ws, port, out):
    """transformers GPT-2 (tied lm_head) sharded with FSDP2, {"model": get_model_state_dict} as torchtune/axolotl-style
    trainers save it; the config is saved beside (rank 0) so the consolidated folder can be from_pretrained."""
    mesh = setup(rank, ws, port)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import torchvision_ops
    torchvision_ops.declare()
    from transformers import GPT2Config, GPT2LMHeadModel
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=37, n_positions=12)
    m = GPT2LMHeadModel(cfg)
    for b in m.transformer.h:
        fully_shard(b, mesh=mesh)
    fully_shard(m, mesh=mesh)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x = torch.randint(0, 37, (2, 8), generator=torch.Generator().manual_seed(rank))
    m(input_ids=x, labels=x).loss.backward()
    opt.step()
    dcp.save({"model": get_model_state_dict(m)}, checkpoint_id=out)
    if rank == 0:
        cfg.save_pretrained(out + "-config")
    dist.destroy_process_group()


CASES = {"hf-gpt2": (w_hf_gpt2, 2), "nocollectives": (w_nocollectives, 2), "hf-consolidated": (w_hf_consolidated, 2),
         "leaves2": (make_leaves2, 0),"fsdp1-sharded": (w_fsdp1, 2), "fsdp2-options": (w_fsdp2_options, 2), "mesh2d": (w_mesh2d, 4),
         "fsdp-tp": (w_fsdp_tp, 4), "async": (w_async, 2), "noflatten": (w_noflatten, 2),
         "dedup-lowest": (w_dedup, 2), "torchtitan": (w_torchtitan, 2), "safetensors-tt": (w_safetensors_tt, 2),
         "torch-save-to-dcp": (make_torch_save_to_dcp, 0), "leaves": (make_leaves, 0)}


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "/tmp/stranger/dcp")
    names = sys.argv[2:] or list(CASES)
    os.makedirs(out, exist_ok=True)
    for i, name in enumerate(names):
        fn, ws = CASES[name]
        path = os.path.join(out, name)
        shutil.rmtree(path, ignore_errors=True)
        t = time.time()
        try:
            if ws:
                mp.spawn(fn, args=(ws, 29800 + i + (os.getpid() % 50) * 20, path), nprocs=ws, join=True)
            else:
                fn(path)
            print(f"{name}: ok in {time.time() - t:.1f}s: {sorted(os.listdir(path))}", flush=True)
        except Exception as e:
            print(f"{name}: FAILED to make: {type(e).__name__}: {str(e)[:300]}", flush=True)


if __name__ == "__main__":
    main()
