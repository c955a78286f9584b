"""Tiny models for the framework fixtures (scripts/make-framework-fixtures.py). The tests import these classes to
load the fixtures with the frameworks' own loaders (LightningModule.load_from_checkpoint needs the class)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def tiny_net():
    """Linear -> BatchNorm1d (a buffer-bearing layer, so EMAs of buffers show) -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def tiny_batches(seed, n=16, batch=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _lightning_module_base():
    import lightning.pytorch as pl
    return pl.LightningModule


try:
    import torchvision_ops  # noqa: F401  (scripts/ on sys.path)
    torchvision_ops.declare()
    _Base = _lightning_module_base()
except Exception:  # lightning not installed: the class is unavailable, the plain helpers still are
    _Base = None

if _Base is not None:
    class TinyLitModel(_Base):
        """A LightningModule with save_hyperparameters(), SGD + StepLR."""

        def __init__(self, hidden=8, lr=0.1, classes=3):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, classes))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


def mmengine_classes():
    """TinyMM (an mmengine BaseModel: backbone + head) and TinyDataset, registered in mmengine's registries."""
    from mmengine.model import BaseModel
    from mmengine.registry import DATASETS, MODELS

    if "TinyMM" in MODELS.module_dict:
        return MODELS.get("TinyMM"), DATASETS.get("TinyDataset")

    class TinyMM(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
            self.head = nn.Linear(8, 3)

        def forward(self, inputs, labels=None, mode="tensor"):
            out = self.head(self.backbone(inputs))
            if mode == "loss":
                return {"loss": F.cross_entropy(out, labels)}
            return out

    class TinyDataset(torch.utils.data.Dataset):
        def __init__(self, seed=0):
            self.items = [(x[i], y[i]) for x, y in tiny_batches(seed) for i in range(len(x))]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            x, y = self.items[i]
            return dict(inputs=x, labels=y)

    MODELS.register_module(module=TinyMM)
    DATASETS.register_module(module=TinyDataset)
    return TinyMM, TinyDataset


TIMM_ARCH = "vit_tiny_patch16_224"
# timm.create_model(TIMM_ARCH, **TIMM_KWARGS): a one-block ViT of 8x8 images (cls_token, pos_embed, patch_embed, ...)
TIMM_KWARGS = dict(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, mlp_ratio=2.0, num_classes=3)
