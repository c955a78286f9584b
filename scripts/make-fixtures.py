#!/usr/bin/env python3
"""Write the torch fixtures in fixtures/ (NAME.pt + NAME.facts.json) with real torch.save.

    .venv/bin/python scripts/make-fixtures.py [OUTDIR]      (default: fixtures/ next to scripts/)

Deterministic: fixed seeds, one CPU thread, deterministic algorithms, fixed dates/strings. torch 2.13's
`.data/serialization_id` is derived from the records (not random), so reruns are byte-identical.
Pickled module objects reference classes in scripts/fixturelib (models.*, ultralytics.*); to load them:
    sys.path.insert(0, 'scripts/fixturelib'); torch.load(path, weights_only=False)
"""

import collections
import io
import math
import os
import sys
from copy import deepcopy

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fixturelib"))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import warnings  # noqa: E402

import torch_facts  # noqa: E402
from models.yolo import Detect, DetectionModel, yolov5s_cfg  # noqa: E402
from tiny_resnet import ResNet  # noqa: E402
from ultralytics import __version__ as ULTRALYTICS_VERSION  # noqa: E402
from ultralytics.nn.tasks import DetectionModel as UDetectionModel, yolov8_cfg  # noqa: E402
from ultralytics.utils import IterableSimpleNamespace  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(HERE), "fixtures")
DATE = "2024-05-01T12:34:56.789012"

COCO80 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]


def save(obj, name, **kwargs):
    path = os.path.join(OUT, name)
    torch.save(obj, path, **kwargs)
    return path


def save_via_buffer(obj, name):
    """Ultralytics' way: torch.save to a BytesIO, then write the bytes (zip root is 'archive')."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path = os.path.join(OUT, name)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


# ---- YOLOv5 ---------------------------------------------------------------------------------

YOLOV5_HYP = {  # data/hyps/hyp.scratch-low.yaml
    "lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0,
    "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0,
    "obj_pw": 1.0, "iou_t": 0.2, "anchor_t": 4.0, "fl_gamma": 0.0, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4,
    "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0, "perspective": 0.0, "flipud": 0.0,
    "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0, "copy_paste": 0.0,
}


class ModelEMA:
    """YOLOv5 / Ultralytics utils/torch_utils.py ModelEMA."""

    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        self.ema = deepcopy(model).eval()  # FP32 EMA
        self.updates = updates  # number of EMA updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))  # decay exponential ramp (to help early epochs)
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, model):
        self.updates += 1
        d = self.decay(self.updates)
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v *= d
                v += (1 - d) * msd[k].detach()

    def update_attr(self, model, include=(), exclude=("process_group", "reducer")):
        for k, v in model.__dict__.items():
            if (len(include) and k not in include) or k.startswith("_") or k in exclude:
                continue
            setattr(self.ema, k, v)


def param_groups_yolo(model):
    """smart_optimizer / build_optimizer grouping: g0 weights (decay), g1 norm weights (no decay), g2 biases."""
    g = [], [], []
    bn = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)  # normalization layers, i.e. BatchNorm2d()
    for v in model.modules():
        for p_name, p in v.named_parameters(recurse=0):
            if p_name == "bias":  # bias (no decay)
                g[2].append(p)
            elif p_name == "weight" and isinstance(v, bn):  # weight (no decay)
                g[1].append(p)
            else:
                g[0].append(p)  # weight (with decay)
    return g


def smart_optimizer(model, lr=0.001, momentum=0.9, decay=1e-5):
    g = param_groups_yolo(model)
    optimizer = torch.optim.SGD(g[2], lr=lr, momentum=momentum, nesterov=True)
    optimizer.add_param_group({"params": g[0], "weight_decay": decay})  # add g0 with weight_decay
    optimizer.add_param_group({"params": g[1], "weight_decay": 0.0})  # add g1 (BatchNorm2d weights)
    return optimizer


def simple_loss(preds):
    return sum(((p.float().sigmoid() - 0.25) ** 2).mean() for p in preds)


def make_yolov5_train():
    torch.manual_seed(0)
    nc, epochs, epoch, batch_size, imgsz = 80, 100, 5, 16, 640
    nb = 8  # batches per epoch (coco128 at batch 16): epoch 5 is still inside the 100-iteration warmup
    model = DetectionModel(yolov5s_cfg(nc=nc), ch=3, nc=nc)

    opt = {  # vars(opt) of train.py's argparse options
        "weights": "yolov5s.pt", "cfg": "", "data": "data/coco128.yaml", "hyp": dict(YOLOV5_HYP),
        "epochs": epochs, "batch_size": batch_size, "imgsz": imgsz, "rect": False, "resume": False,
        "nosave": False, "noval": False, "noautoanchor": False, "noplots": False, "evolve": None,
        "evolve_population": "data/hyps", "resume_evolve": None, "bucket": "", "cache": None,
        "image_weights": False, "device": "", "multi_scale": False, "single_cls": False, "optimizer": "SGD",
        "sync_bn": False, "workers": 8, "project": "runs/train", "name": "exp", "exist_ok": False, "quad": False,
        "cos_lr": False, "label_smoothing": 0.0, "patience": 100, "freeze": [0], "save_period": -1, "seed": 0,
        "local_rank": -1, "entity": None, "upload_dataset": False, "bbox_interval": -1, "artifact_alias": "latest",
        "ndjson_console": False, "ndjson_file": False, "save_dir": "runs/train/exp",
    }
    hyp = dict(YOLOV5_HYP)
    nl = model.model[-1].nl
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = opt["label_smoothing"]
    model.nc = nc
    model.hyp = hyp
    model.names = dict(enumerate(COCO80))
    classes = torch.randint(0, nc, (929,)).numpy()  # labels_to_class_weights(dataset.labels, nc) * nc
    weights = np.bincount(classes, minlength=nc).astype(np.float64)
    weights[weights == 0] = 1
    weights = 1 / weights
    weights /= weights.sum()
    model.class_weights = torch.from_numpy(weights).float() * nc

    nbs = 64
    accumulate = max(round(nbs / batch_size), 1)
    hyp["weight_decay"] *= batch_size * accumulate / nbs
    optimizer = smart_optimizer(model, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    lf = lambda x: (1 - x / epochs) * (1.0 - hyp["lrf"]) + hyp["lrf"]  # noqa: E731  linear
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(model)
    scheduler.last_epoch = epoch - 1

    nw = max(round(hyp["warmup_epochs"] * nb), 100)
    model.train()
    for i in range(3):  # 3 optimizer steps
        ni = i + nb * epoch
        xi = [0, nw]
        for j, x in enumerate(optimizer.param_groups):  # warmup: numpy float64 lr / momentum, as in train.py
            x["lr"] = np.interp(ni, xi, [hyp["warmup_bias_lr"] if j == 0 else 0.0, x["initial_lr"] * lf(epoch)])
            if "momentum" in x:
                x["momentum"] = np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]])
        imgs = torch.rand(2, 3, 64, 64)
        loss = simple_loss(model(imgs))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
    scheduler.step()  # end of epoch: lr back to python floats, momentum stays numpy
    ema.update_attr(model, include=["yaml", "nc", "hyp", "names", "stride", "class_weights"])
    with torch.no_grad():  # val.run(model=ema.ema): eval forward fills Detect.grid / anchor_grid
        ema.ema(torch.zeros(1, 3, 64, 64))
    results = (0.612, 0.524, 0.553, 0.351, 0.041, 0.052, 0.013)  # P, R, mAP@.5, mAP@.5-.95, val losses
    x = np.array(results).reshape(1, -1)
    fi = (x[:, :4] * [0.0, 0.0, 0.1, 0.9]).sum(1)  # fitness(): numpy array shape (1,) float64
    best_fitness = 0.0
    if fi > best_fitness:
        best_fitness = fi

    ckpt = {
        "epoch": epoch,
        "best_fitness": best_fitness,
        "model": deepcopy(model).half(),
        "ema": deepcopy(ema.ema).half(),
        "updates": ema.updates,
        "optimizer": optimizer.state_dict(),
        "opt": opt,
        "git": {"remote": "https://github.com/ultralytics/yolov5", "branch": "master",
                "commit": "4b3ef3f5e4f1f0d5b9a1c2d3e4f5a6b7c8d9e0f1"},
        "date": DATE,
    }
    return save(ckpt, "yolov5s-train.pt")


def make_yolov5_nc3_init():
    torch.manual_seed(1)
    model = DetectionModel(yolov5s_cfg(nc=80), ch=3, nc=3)  # yolov5s.yaml with nc overridden, as train.py does
    model.nc = 3
    model.names = {0: "cat", 1: "dog", 2: "bird"}
    return save({"model": model}, "yolov5s-nc3-init.pt")


# ---- Ultralytics ----------------------------------------------------------------------------


def make_ultralytics_train():
    torch.manual_seed(2)
    nc, epochs, epoch = 3, 100, 2
    names = {0: "cat", 1: "dog", 2: "bird"}
    train_args = {  # vars(trainer.args), abridged
        "task": "detect", "mode": "train", "model": "yolov8n.yaml", "data": "pets3.yaml", "epochs": epochs,
        "time": None, "patience": 100, "batch": 16, "imgsz": 640, "save": True, "save_period": -1, "cache": False,
        "device": None, "workers": 8, "project": None, "name": "train", "exist_ok": False, "pretrained": True,
        "optimizer": "auto", "verbose": True, "seed": 0, "deterministic": True, "single_cls": False, "rect": False,
        "cos_lr": False, "close_mosaic": 10, "resume": False, "amp": True, "fraction": 1.0, "profile": False,
        "freeze": None, "multi_scale": False, "overlap_mask": True, "mask_ratio": 4, "dropout": 0.0, "val": True,
        "split": "val", "save_json": False, "save_hybrid": False, "conf": None, "iou": 0.7, "max_det": 300,
        "half": False, "dnn": False, "plots": True, "source": None, "lr0": 0.01, "lrf": 0.01, "momentum": 0.937,
        "weight_decay": 0.0005, "warmup_epochs": 3.0, "warmup_momentum": 0.8, "warmup_bias_lr": 0.1,
        "box": 7.5, "cls": 0.5, "dfl": 1.5, "nbs": 64, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4,
        "degrees": 0.0, "translate": 0.1, "scale": 0.5, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0,
        "cfg": None, "tracker": "botsort.yaml", "save_dir": "runs/detect/train",
    }
    args = IterableSimpleNamespace(**train_args)
    model = UDetectionModel(yolov8_cfg(nc=nc, scale="n"), ch=3, nc=nc)
    model.nc = nc
    model.names = names
    model.args = args  # trainer.set_model_attributes()
    ema = ModelEMA(model)

    g = param_groups_yolo(model)  # build_optimizer(name="auto") -> AdamW(lr=0.002, momentum=0.9) for small runs
    lr_fit, momentum, decay = 0.002, 0.9, train_args["weight_decay"]
    optimizer = torch.optim.AdamW(g[2], lr=lr_fit, betas=(momentum, 0.999), weight_decay=0.0)
    optimizer.add_param_group({"params": g[0], "weight_decay": decay})
    optimizer.add_param_group({"params": g[1], "weight_decay": 0.0})
    lf = lambda x: max(1 - x / epochs, 0) * (1.0 - train_args["lrf"]) + train_args["lrf"]  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    scheduler.last_epoch = epoch - 1

    nb, nw = 4, 100
    model.train()
    for i in range(2):  # 2 optimizer steps
        ni = i + nb * epoch
        for j, x in enumerate(optimizer.param_groups):
            x["lr"] = np.interp(ni, [0, nw], [train_args["warmup_bias_lr"] if j == 0 else 0.0,
                                              x["initial_lr"] * lf(epoch)])
        loss = simple_loss(model(torch.rand(2, 3, 64, 64)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
    ema.update_attr(model, include=["yaml", "nc", "args", "names", "stride", "class_weights"])
    val_model = ema.ema.float().eval()  # validator: model.float(), eval forward sets Detect.anchors/strides/shape
    with torch.no_grad():
        val_model(torch.zeros(1, 3, 64, 64))

    opt_sd = deepcopy(optimizer.state_dict())  # convert_optimizer_state_dict_to_fp16
    for state in opt_sd["state"].values():
        for k, v in state.items():
            if k != "step" and isinstance(v, torch.Tensor) and v.dtype is torch.float32:
                state[k] = v.half()
    metrics = {
        "metrics/precision(B)": 0.61234, "metrics/recall(B)": 0.52345, "metrics/mAP50(B)": 0.55321,
        "metrics/mAP50-95(B)": 0.35123, "val/box_loss": 1.23456, "val/cls_loss": 2.34567, "val/dfl_loss": 1.11111,
    }
    fitness = 0.1 * metrics["metrics/mAP50(B)"] + 0.9 * metrics["metrics/mAP50-95(B)"]
    ckpt = {
        "epoch": epoch,
        "best_fitness": fitness,
        "model": None,  # resume and final checkpoints derive from EMA
        "ema": deepcopy(ema.ema).half(),
        "updates": ema.updates,
        "optimizer": opt_sd,
        "train_args": train_args,
        "train_metrics": {**metrics, **{"fitness": fitness}},
        "date": DATE,
        "version": ULTRALYTICS_VERSION,
        "license": "AGPL-3.0 (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    return save_via_buffer(ckpt, "ultralytics-train.pt")


# ---- ResNet / OpenMMLab -----------------------------------------------------------------------


def trained_resnet(seed):
    torch.manual_seed(seed)
    model = ResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(2):
        out = model(torch.rand(4, 3, 32, 32))
        loss = nn.functional.cross_entropy(out, torch.randint(0, 10, (4,)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def make_resnet():
    model, _ = trained_resnet(3)
    paths = [save(model.state_dict(), "resnet-sd.pt")]
    ddp_sd = nn.DataParallel(model).state_dict()  # 'module.' prefix (DDP/DataParallel), _metadata included
    # pytorch/examples imagenet main.py save_checkpoint (best_acc1 is a 0-dim tensor there)
    paths.append(save({"state_dict": ddp_sd, "epoch": 3, "arch": "resnet18", "best_acc1": torch.tensor(41.25)},
                      "resnet-nested.pt"))
    return paths


class _LinearClsHead(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)


class _ImageClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ResNet()
        self.backbone.fc = nn.Identity()
        self.head = _LinearClsHead(32, 10)

    def forward(self, x):
        return self.head.fc(self.backbone(x))


def make_mmlab():
    torch.manual_seed(4)
    model = _ImageClassifier()  # keys: backbone.*, head.fc.*  (mmpretrain ImageClassifier layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.randint(0, 10, (4,)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    cfg_text = "model = dict(type='ImageClassifier', backbone=dict(type='ResNet', depth=18))\n" \
               "optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0001))\n"
    ckpt = {
        "meta": {
            "cfg": cfg_text, "seed": 0, "experiment_name": "resnet18_8xb16_cifar10_20240501_123456",
            "time": "20240501_123456", "mmengine_version": "0.10.4", "mmpretrain_version": "1.2.0",
            "dataset_meta": {"classes": classes}, "epoch": 12, "iter": 3750,
        },
        "state_dict": model.state_dict(),
        "message_hub": {  # mmengine MessageHub.state_dict(), with plain values instead of HistoryBuffer objects
            "log_scalars": {"train/loss": {"data": ([2.31, 2.25, 2.19], [1, 1, 1])}, "train/lr": {"data": ([0.1], [1])}},
            "runtime_info": {"epoch": 12, "iter": 3750, "max_epochs": 200, "max_iters": 62600,
                             "dataset_meta": {"classes": classes}},
            "resumed_keys": {"epoch": True, "iter": True, "max_epochs": True},
        },
        "optimizer": optimizer.state_dict(),
        "param_schedulers": [{  # MultiStepLR.state_dict(): milestones is a collections.Counter
            "milestones": collections.Counter({100: 1, 150: 1}), "gamma": 0.1, "begin": 0, "end": 200,
            "by_epoch": True, "last_step": 12, "verbose": False, "_get_lr_called_within_step": False,
            "_last_value": [0.1], "param_name": "lr", "_global_step": 12,
        }],
    }
    return save(ckpt, "mmlab-style.pt")


# ---- dtypes / pickle corner cases -------------------------------------------------------------


def all_dtype_tensors():
    torch.manual_seed(5)
    base = torch.randn(2, 3)
    raw8 = torch.tensor([[0, 1, 127], [128, 200, 255]], dtype=torch.uint8)
    raw16 = torch.tensor([[0, 1, 2], [1000, -1, 32767]], dtype=torch.int16)
    out = {
        "float16": base.half(),
        "bfloat16": base.bfloat16(),
        "float32": base.clone(),
        "float64": base.double(),
        "uint8": raw8.clone(),
        "int8": torch.tensor([[-128, -1, 0], [1, 2, 127]], dtype=torch.int8),
        "int16": raw16.clone(),
        "int32": torch.tensor([[-(2**31), -1, 0], [1, 2, 2**31 - 1]], dtype=torch.int32),
        "int64": torch.tensor([[-(2**63), -1, 0], [1, 2, 2**63 - 1]], dtype=torch.int64),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "complex64": torch.complex(base, -base),
        "complex128": torch.complex(base.double(), base.double() * 2),
        "complex32": torch.complex(base, -base).to(torch.complex32),
        "float8_e4m3fn": base.to(torch.float8_e4m3fn),
        "float8_e5m2": base.to(torch.float8_e5m2),
        "float8_e4m3fnuz": base.to(torch.float8_e4m3fnuz),
        "float8_e5m2fnuz": base.to(torch.float8_e5m2fnuz),
        "float8_e8m0fnu": base.abs().to(torch.float8_e8m0fnu),
        "float4_e2m1fn_x2": raw8.clone().view(torch.float4_e2m1fn_x2),  # packed pairs; built from bytes
        "uint16": torch.tensor([[0, 1, 2], [1000, 40000, 65535]], dtype=torch.int32).to(torch.uint16),
        "uint32": torch.tensor([[0, 1, 2], [1000, 2**31, 2**32 - 1]], dtype=torch.int64).to(torch.uint32),
        "uint64": torch.tensor([[0, 1, 2], [1000, 2**40, 2**62]], dtype=torch.int64).to(torch.uint64),
        "bits8": raw8.clone().view(torch.bits8),
        "bits16": raw16.clone().view(torch.bits16),
        "bits1x8": raw8.clone().view(torch.bits1x8),
        "bits2x4": raw8.clone().view(torch.bits2x4),
        "bits4x2": raw8.clone().view(torch.bits4x2),
    }
    return out


REFUSED_DTYPES = {}


def probe_refused_dtypes():
    """dtypes torch has but cannot save (recorded in fixtures/README.md and the report)."""
    have = set(all_dtype_tensors())
    for name in sorted(n for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)):
        d = getattr(torch, name)
        dn = torch_facts.dtype_name(d)
        if dn in have or dn.startswith(("qint", "quint")) or dn in REFUSED_DTYPES:
            continue
        try:
            t = torch.zeros(2, dtype=torch.uint8).view(d) if d.itemsize == 1 else torch.zeros(2, dtype=d)
            torch.save(t, io.BytesIO())
        except Exception as e:
            REFUSED_DTYPES[dn] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"


def make_dtypes():
    d = {}
    d.update(all_dtype_tensors())
    torch.manual_seed(6)
    d["zero_dim_f32"] = torch.tensor(3.5)
    d["zero_dim_i64"] = torch.tensor(-7)
    d["zero_dim_bool"] = torch.tensor(True)
    d["empty_0"] = torch.zeros(0)
    d["empty_3x0"] = torch.zeros(3, 0, dtype=torch.int32)
    d["transposed"] = torch.arange(12.0).reshape(3, 4).t()  # stride (1, 4)
    d["step_slice"] = torch.arange(20.0)[::3]  # stride (3,)
    d["offset_slice"] = torch.arange(10, dtype=torch.int16)[4:7]  # storage_offset 4
    d["expanded"] = torch.arange(3.0).view(3, 1).expand(3, 4)  # stride (1, 0)
    shared = torch.arange(20, dtype=torch.int32)  # one 80-byte storage, partly unreferenced
    d["view_a"] = shared[2:8]
    d["view_b"] = shared[10:18].view(2, 4)
    # different dtypes viewing one storage: torch refuses this for classic dtypes, but the _rebuild_tensor_v3
    # dtypes all pickle an UntypedStorage (numel in bytes), so it saves
    raw = torch.arange(8, dtype=torch.uint8) * 17
    d["cross_dtype_f8"] = raw.view(torch.float8_e4m3fn)
    d["cross_dtype_bits8"] = raw.view(torch.bits8)[4:].view(2, 2)
    tied = nn.Parameter(torch.randn(4, 4))
    d["tied_a"] = tied  # the same Parameter object under two keys
    d["tied_b"] = tied
    d["param_grad"] = nn.Parameter(torch.randn(3), requires_grad=True)
    d["param_nograd"] = nn.Parameter(torch.randn(3), requires_grad=False)
    d["tensor_requires_grad"] = torch.ones(2).requires_grad_(True)
    d.update({
        "big_int": 2**70, "big_neg_int": -(2**70), "int64_max": 2**63 - 1, "int64_min": -(2**63),
        "int_2_31": 2**31, "int_255": 255, "int_65535": 65535, "int_neg1": -1, "int_0": 0,
        "nan": float("nan"), "inf": float("inf"), "neg_inf": float("-inf"), "neg_zero": -0.0, "float": 0.1,
        "complex": complex(1.5, -2.0),
        "unicode": "héllo wörld ✓ 日本語 🚀", "empty_str": "", "long_str": "x" * 300,
        "bytes": b"\x00\x01\xffbinary\x80", "empty_bytes": b"",
        "set": {1, 2, 3}, "frozenset": frozenset({4, 5}),  # ints: str hashes (so set order) vary per process
        "nested": {"list": [1, [2, (3, 4)], {"k": None}], "tuple": (1.5, "x", (True, False)),
                   "tensors": [torch.tensor([1, 2]), {"t": torch.tensor([[0.5]])}]},
        "empty_dict": {}, "empty_list": [], "empty_tuple": (), "ordered": collections.OrderedDict(b=1, a=2),
        "none": None, "true": True, "false": False,
    })
    return save(d, "dtypes.pt")


def make_quantized():
    q8 = torch.quantize_per_tensor(torch.tensor([-1.0, 0.0, 0.5, 1.0]), scale=0.1, zero_point=3, dtype=torch.qint8)
    qu8 = torch.quantize_per_tensor(torch.tensor([0.0, 0.5, 2.0]), scale=0.05, zero_point=10, dtype=torch.quint8)
    q32 = torch.quantize_per_tensor(torch.tensor([-3.0, 4.0]), scale=0.5, zero_point=0, dtype=torch.qint32)
    qch = torch.quantize_per_channel(torch.tensor([[0.1, 0.2], [1.0, -1.0]]), torch.tensor([0.01, 0.1]),
                                     torch.tensor([0, 1]), axis=0, dtype=torch.qint8)
    return save({"qint8": q8, "quint8": qu8, "qint32": q32, "qint8_per_channel": qch}, "quantized.pt")


# ---- small state dicts ------------------------------------------------------------------------


def small_net(seed=7):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    net.train()
    net(torch.rand(2, 3, 4, 4))  # update running stats (num_batches_tracked = 1)
    return net


def make_small_sds():
    sd = small_net().state_dict()
    paths = [save(sd, f"sd-proto{p}.pt", pickle_protocol=p) for p in (2, 4, 5)]
    paths.append(save(sd, "sd-legacy.pt", _use_new_zipfile_serialization=False))
    paths.append(save(nn.DataParallel(small_net()).state_dict(), "sd-with-module-prefix.pt"))
    return paths


def main():
    os.makedirs(OUT, exist_ok=True)
    paths = [make_yolov5_train(), make_yolov5_nc3_init(), make_ultralytics_train()]
    paths += make_resnet()
    paths.append(make_mmlab())
    paths.append(make_dtypes())
    paths.append(make_quantized())
    paths += make_small_sds()
    probe_refused_dtypes()
    for p in paths:
        f = torch_facts.facts(p)
        with open(p[: -len(".pt")] + ".facts.json", "w", encoding="utf-8") as fh:
            fh.write(torch_facts.dumps(f))
        print(f"{os.path.getsize(p):>9}  {os.path.basename(p)}")
    if REFUSED_DTYPES:
        print("dtypes torch refuses to save:")
        for k, v in REFUSED_DTYPES.items():
            print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
