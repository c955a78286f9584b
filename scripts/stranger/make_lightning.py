#!/usr/bin/env python3
"""Lightning checkpoints of distributed strategies on CPU, 2 processes (Lightning launches them itself):

    .venv/bin/python scripts/stranger/make_lightning.py fsdp OUT          # FSDPStrategy(state_dict_type="sharded")
    .venv/bin/python scripts/stranger/make_lightning.py modelparallel OUT # ModelParallelStrategy (FSDP2 + DCP)
    PYTHONPATH=... python scripts/stranger/make_lightning.py deepspeed OUT [STAGE]   # DeepSpeedStrategy

The deepspeed kind runs with the project venv's lightning and .venv-ds's deepspeed (appended to sys.path).
Each run trains 2 steps and calls trainer.save_checkpoint(OUT) (a folder for these strategies).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torchvision_ops  # noqa: E402

torchvision_ops.declare()
kind, out = sys.argv[1], sys.argv[2]
if kind == "deepspeed":
    sys.path.append("/work/main/.venv-ds/lib/python3.11/site-packages")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import lightning as L  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

V, D = 13, 6


class LitLM(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, D)
        self.block = torch.nn.Sequential(torch.nn.Linear(D, 10), torch.nn.GELU(), torch.nn.Linear(10, D))
        self.norm = torch.nn.LayerNorm(D)
        self.head = torch.nn.Linear(D, V, bias=False)
        self.register_buffer("pos", torch.arange(5.0))

    def configure_model(self):
        if kind == "fsdp":  # manual wrapping (Lightning then keeps the model as it is): device_id cpu runs on CPU
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            if not isinstance(self.block, FSDP):
                self.emb = FSDP(self.emb, device_id=torch.device("cpu"), use_orig_params=True)
                self.block = FSDP(self.block, device_id=torch.device("cpu"), use_orig_params=True)
                self.head = FSDP(self.head, device_id=torch.device("cpu"), use_orig_params=True)
        if kind == "modelparallel":
            from torch.distributed.fsdp import fully_shard
            for m in (self.block, self.head):
                fully_shard(m, mesh=self.device_mesh["data_parallel"])
            fully_shard(self, mesh=self.device_mesh["data_parallel"])

    def forward(self, x):
        return self.head(self.norm(self.block(self.emb(x))))

    def training_step(self, batch, _):
        (x,) = batch
        logits = self(x[:, :-1]).float()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def main():
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randint(0, V, (8, 6))), batch_size=2)
    if kind == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        class CPUFSDPStrategy(FSDPStrategy):  # Lightning refuses type(...) is FSDPStrategy on CPU; a subclass runs
            pass
        strategy = CPUFSDPStrategy(state_dict_type="sharded", process_group_backend="gloo")
    elif kind == "modelparallel":
        from lightning.pytorch.strategies import ModelParallelStrategy
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=True)
    else:
        from lightning.pytorch.strategies import DeepSpeedStrategy
        stage = int(sys.argv[3]) if len(sys.argv) > 3 else 2

        class CPUDeepSpeedStrategy(DeepSpeedStrategy):  # Lightning refuses a CPUAccelerator; DeepSpeed runs on CPU
            def setup_environment(self):
                from lightning.pytorch.strategies.ddp import DDPStrategy
                DDPStrategy.setup_environment(self)

            @property
            def root_device(self):  # DeepSpeed wants a device index (args.device_rank); cpu:LOCAL_RANK is one
                return torch.device("cpu", self.local_rank)
        import lightning.pytorch.strategies.deepspeed as lds
        lds._validate_device_index_selection = lambda devices: None
        strategy = CPUDeepSpeedStrategy(stage=stage, process_group_backend="gloo")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model = LitLM()
    trainer.fit(model, data)
    trainer.save_checkpoint(out)
    if trainer.global_rank == 0:
        print("saved", out, sorted(os.listdir(out)) if os.path.isdir(out) else "file")


if __name__ == "__main__":
    main()
