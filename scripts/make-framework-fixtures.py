#!/usr/bin/env python3
"""Write fixtures/frameworks/: one checkpoint per training framework, each saved by that framework's own code.

    .venv/bin/python scripts/make-framework-fixtures.py [OUTDIR]     (default: fixtures/frameworks/)

Each is a tiny model (a few thousand parameters at most) trained a few real optimizer steps, with an EMA where the
framework has one, plus NAME.facts.json from scripts/torch_facts.py.

- Installed here (versions pinned in scripts/setup): lightning, timm, mmengine, transformers. Their fixtures come
  from the framework's own Trainer / CheckpointSaver / Runner and saving code.
- Not installable here (torchvision's reference scripts, detectron2, fairseq, the CompVis LDM codebase): the dict is
  built exactly as the cited upstream save code builds it, from real torch modules, optimizers and schedulers.

Deterministic: fixed seeds, one CPU thread, a fixed work folder (WORK below: Lightning and mmengine record their
output folder in the checkpoint), and mmengine's clock replaced by a counter (it records timestamps and iteration
times). torch 2.13's serialization_id derives from the records, so reruns are byte-identical.
What each file holds and what `ckpt strip` does to it: docs/frameworks.md.
"""

import argparse
import collections
import math
import os
import shutil
import sys
import warnings
from copy import deepcopy

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fixturelib"))
sys.path.insert(0, HERE)

import torchvision_ops  # noqa: E402

torchvision_ops.declare()  # before anything imports torchvision (timm, lightning's torchmetrics, transformers)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_facts  # noqa: E402
from fw_models import TIMM_ARCH, TIMM_KWARGS, tiny_batches, tiny_net  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

OUT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(HERE), "fixtures", "frameworks"))
WORK = "/tmp/ckpt-framework-fixtures"  # fixed: Lightning's ModelCheckpoint and mmengine record their folders


def fresh(name):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def publish(src, name):
    """Copies a checkpoint a framework wrote into OUT as NAME.pt, with NAME.facts.json."""
    dst = os.path.join(OUT, name)
    shutil.copyfile(src, dst)
    write_facts(dst)
    return dst


def save(obj, name):
    """torch.save, as the non-installable frameworks' save code calls it."""
    dst = os.path.join(OUT, name)
    torch.save(obj, dst)
    write_facts(dst)
    return dst


def write_facts(path):
    f = torch_facts.facts(path)
    with open(os.path.splitext(path)[0] + ".facts.json", "w") as out:
        out.write(torch_facts.dumps(f))


def train_steps(model, optimizer, batches, scheduler=None, after_step=None):
    """Real optimizer steps on the tiny batches (cross-entropy)."""
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()


# ---- Lightning (installed) --------------------------------------------------------------------------------------


def make_lightning():
    """Lightning's own Trainer.fit + Trainer.save_checkpoint / ModelCheckpoint
    (lightning/pytorch/trainer/connectors/checkpoint_connector.py dump_checkpoint)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
    from lightning.pytorch.plugins.precision import MixedPrecision

    from fw_models import TinyLitModel

    def trainer(root, **kw):
        return pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=root, deterministic=True, **kw)

    def loader():
        return torch.utils.data.DataLoader(tiny_batches(0), batch_size=None)

    paths = []
    # plain: fit, then trainer.save_checkpoint
    root = fresh("lightning")
    pl.seed_everything(0, verbose=False)
    t = trainer(root, enable_checkpointing=False)
    t.fit(TinyLitModel(), loader())
    t.save_checkpoint(os.path.join(root, "last.ckpt"))
    paths.append(publish(os.path.join(root, "last.ckpt"), "lightning.pt"))

    # EMAWeightAveraging: ModelCheckpoint saves during fit (after 6 of 8 steps), when the callback's on_save_checkpoint
    # puts the average into state_dict and the live weights into current_model_state (weight_averaging.py).
    # After fit ends, on_train_end copies the average into the model, so a save then would show no difference.
    root = fresh("lightning-ema")
    pl.seed_everything(0, verbose=False)
    t = trainer(root, callbacks=[EMAWeightAveraging(decay=0.9),
                                 ModelCheckpoint(dirpath=root, filename="step6", every_n_train_steps=6, save_top_k=-1)])
    t.fit(TinyLitModel(), loader())
    paths.append(publish(os.path.join(root, "step6.ckpt"), "lightning-ema.pt"))

    # 16-mixed with a CPU GradScaler: the precision plugin's state (the scaler's) is saved under the record
    # "MixedPrecision" (dump_checkpoint writes checkpoint[prec_plugin.__class__.__qualname__] when non-empty).
    # Trainer(precision="16-mixed") on CPU falls back to bf16-mixed, which has no state, so the plugin is passed.
    root = fresh("lightning-amp")
    pl.seed_everything(0, verbose=False)
    t = trainer(root, enable_checkpointing=False,
                plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
    t.fit(TinyLitModel(), loader())
    t.save_checkpoint(os.path.join(root, "last.ckpt"))
    paths.append(publish(os.path.join(root, "last.ckpt"), "lightning-amp.pt"))
    return paths


# ---- timm (installed) -------------------------------------------------------------------------------------------


def make_timm():
    """timm's own CheckpointSaver (timm/utils/checkpoint_saver.py _save) with ModelEmaV3 and NativeScaler, after
    AMP steps as timm's train.py takes them (create_optimizer_v2, autocast, loss_scaler(loss, optimizer))."""
    import timm
    from timm.optim import create_optimizer_v2
    from timm.utils import CheckpointSaver, ModelEmaV3, NativeScaler

    torch.manual_seed(0)
    model = timm.create_model(TIMM_ARCH, **TIMM_KWARGS)
    model_ema = ModelEmaV3(model, decay=0.9)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    loss_scaler = NativeScaler(device="cpu")
    args = argparse.Namespace(  # a subset of train.py's argparse options (args.model is what the saver records)
        model=TIMM_ARCH, num_classes=3, img_size=8, batch_size=4, opt="adamw", lr=1e-3, weight_decay=0.05,
        epochs=1, sched="cosine", amp=True, amp_dtype="float16", model_ema=True, model_ema_decay=0.9, seed=0,
        output="", experiment="tiny")
    root = fresh("timm")
    saver = CheckpointSaver(model=model, optimizer=optimizer, args=args, model_ema=model_ema, amp_scaler=loss_scaler,
                            checkpoint_dir=root, recovery_dir=root, decreasing=False, max_history=1)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(3):
        x = torch.randn(4, 3, 8, 8, generator=g)
        y = torch.randint(0, 3, (4,), generator=g)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss_scaler(loss, optimizer, parameters=model.parameters())
        model_ema.update(model, step=step)
    saver.save_checkpoint(epoch=0, metric=41.5)
    return [publish(os.path.join(root, "last.pth.tar"), "timm.pt")]


# ---- mmengine (installed) ---------------------------------------------------------------------------------------


class _Clock:
    """Stands in for the `time` module inside mmengine's runner and iteration timer, which record wall-clock times
    (meta.time, message_hub's train/time and data_time): each time() call is 0.25 s after the previous one."""

    def __init__(self):
        import time as real
        self._real = real
        self._t = 1714566896.0  # 2024-05-01 12:34:56 UTC

    def time(self):
        self._t += 0.25
        return self._t

    def localtime(self, t=None):
        return self._real.gmtime(self._t if t is None else t)

    def __getattr__(self, name):
        return getattr(self._real, name)


def make_mmengine():
    """mmengine's own Runner.train + Runner.save_checkpoint (mmengine/runner/runner.py) with EMAHook in custom_hooks
    (mmengine/hooks/ema_hook.py before_save_checkpoint: state_dict <- EMA, ema_state_dict <- live weights)."""
    import mmengine.hooks.iter_timer_hook as iter_timer_hook
    import mmengine.runner.runner as runner_module
    from mmengine.config import Config
    from mmengine.runner import Runner

    from fw_models import mmengine_classes

    mmengine_classes()
    clock = _Clock()
    runner_module.time = clock
    iter_timer_hook.time = clock
    root = fresh("mmengine")
    cwd = os.getcwd()
    os.chdir(WORK)  # mmengine appends the git hash of the working folder to mmengine_version: none here
    try:
        cfg = Config(dict(
            model=dict(type="TinyMM"),
            work_dir=root,
            experiment_name="tiny_mm",
            train_dataloader=dict(dataset=dict(type="TinyDataset", seed=0), batch_size=4,
                                  sampler=dict(type="DefaultSampler", shuffle=False),
                                  collate_fn=dict(type="default_collate")),
            optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4)),
            param_scheduler=[dict(type="MultiStepLR", milestones=[2], by_epoch=False)],
            train_cfg=dict(by_epoch=False, max_iters=4),
            custom_hooks=[dict(type="EMAHook", momentum=0.1)],
            default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=100, by_epoch=False),
                               logger=dict(type="LoggerHook", interval=100)),
            randomness=dict(seed=0, deterministic=True),
            log_level="WARNING",
            visualizer=dict(type="Visualizer", vis_backends=[]),
            default_scope="mmengine",
        ))
        runner = Runner.from_cfg(cfg)
        runner.train()
        runner.save_checkpoint(root, "iter_4_ema.pth")
        # the logger's file handler keeps the log open; close it so the folder can go
        for h in list(runner.logger.handlers):
            h.close()
    finally:
        os.chdir(cwd)
    return [publish(os.path.join(root, "iter_4_ema.pth"), "mmengine-ema.pt")]


# ---- Hugging Face Trainer (installed) ---------------------------------------------------------------------------


def make_hf_trainer():
    """transformers' own Trainer with save_steps: checkpoint-3/ as Trainer._save_checkpoint writes it
    (model.safetensors with GPT-2's tied lm_head written once, config.json, generation_config.json, optimizer.pt,
    scheduler.pt, rng_state.pth, trainer_state.json, training_args.bin). Every file is kept."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

    set_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=1)
    model = GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(8):
        ids = torch.randint(0, 32, (8,), generator=g)
        data.append({"input_ids": ids, "labels": ids.clone()})
    root = fresh("hf")
    cwd = os.getcwd()
    os.chdir(root)  # output_dir is recorded in training_args.bin: keep it relative
    try:
        args = TrainingArguments(output_dir="hf-trainer", max_steps=3, save_steps=3, per_device_train_batch_size=2,
                                 learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True, seed=0,
                                 disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=data).train()
    finally:
        os.chdir(cwd)
    src = os.path.join(root, "hf-trainer", "checkpoint-3")
    dst = os.path.join(OUT, "hf-trainer", "checkpoint-3")
    shutil.rmtree(os.path.join(OUT, "hf-trainer"), ignore_errors=True)
    shutil.copytree(src, dst)
    for f in os.listdir(dst):  # save_file creates model.safetensors 0600
        os.chmod(os.path.join(dst, f), 0o644)
    return [dst]


# ---- torchvision reference scripts (not installable as a package: references/ is not in the wheel) --------------


def make_torchvision_reference():
    """pytorch/vision references/classification/train.py main(): the `checkpoint` dict saved each epoch
    (model, optimizer, lr_scheduler, epoch, args, + model_ema with --model-ema, + scaler with --amp), written with
    utils.save_on_master (torch.save). model_ema is references/classification/utils.py ExponentialMovingAverage: a
    torch.optim.swa_utils.AveragedModel with use_buffers=True and an EMA avg_fn, so its state_dict is `module.`
    + every model name, then `n_averaged`. train.py updates it every model_ema_steps iterations with the decay
    adjusted as it does there."""
    torch.manual_seed(0)
    model = tiny_net()
    args = argparse.Namespace(  # a subset of train.py's get_args_parser() options
        data_path="/datasets01/imagenet_full_size/061417/", model="tiny_net", device="cpu", batch_size=4, epochs=2,
        workers=16, opt="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, label_smoothing=0.0, lr_scheduler="steplr",
        lr_step_size=30, lr_gamma=0.1, print_freq=10, output_dir=".", resume="", start_epoch=0,
        model_ema=True, model_ema_steps=2, model_ema_decay=0.99998, amp=True, world_size=1, distributed=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    scaler = torch.amp.GradScaler("cpu")
    adjust = args.world_size * args.batch_size * args.model_ema_steps / args.epochs
    alpha = min(1.0, (1.0 - args.model_ema_decay) * adjust)
    decay = 1.0 - alpha

    def ema_avg(avg_model_param, model_param, num_averaged):
        return decay * avg_model_param + (1 - decay) * model_param

    model_ema = torch.optim.swa_utils.AveragedModel(model, avg_fn=ema_avg, use_buffers=True)
    model.train()
    for epoch in range(args.epochs):
        for i, (x, y) in enumerate(tiny_batches(epoch)):
            loss = F.cross_entropy(model(x), y)  # train_one_epoch; its autocast is CUDA-only, the scaler is not
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if i % args.model_ema_steps == 0:
                model_ema.update_parameters(model)
        lr_scheduler.step()
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "epoch": args.epochs - 1,
        "args": args,
    }
    checkpoint["model_ema"] = model_ema.state_dict()
    checkpoint["scaler"] = scaler.state_dict()
    return [save(checkpoint, "torchvision-ref.pt")]


# ---- detectron2 (not installable here: needs a C++/CUDA build) ---------------------------------------------------


class _D2Model(nn.Module):
    """Names in a detectron2 GeneralizedRCNN's layout (backbone.bottom_up.stem.conv1 with a FrozenBatchNorm-style
    norm, proposal_generator.rpn_head, roi_heads.box_predictor), tiny widths."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = nn.Module()
        self.backbone.bottom_up.stem = nn.Module()
        self.backbone.bottom_up.stem.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.backbone.bottom_up.stem.conv1.norm = nn.BatchNorm2d(4)
        self.proposal_generator = nn.Module()
        self.proposal_generator.rpn_head = nn.Module()
        self.proposal_generator.rpn_head.conv = nn.Conv2d(4, 4, 1)
        self.proposal_generator.rpn_head.objectness_logits = nn.Conv2d(4, 1, 1)
        self.roi_heads = nn.Module()
        self.roi_heads.box_predictor = nn.Module()
        self.roi_heads.box_predictor.cls_score = nn.Linear(4, 3)
        self.roi_heads.box_predictor.bbox_pred = nn.Linear(4, 8)

    def forward(self, x):
        stem = self.backbone.bottom_up.stem.conv1
        f = F.relu(stem.norm(stem(x)))
        obj = self.proposal_generator.rpn_head.objectness_logits(F.relu(self.proposal_generator.rpn_head.conv(f)))
        pooled = f.mean((2, 3))
        bp = self.roi_heads.box_predictor
        return bp.cls_score(pooled), bp.bbox_pred(pooled), obj


def make_detectron2():
    """facebookresearch/detectron2 tools/plain_train_net.py do_train(): DetectionCheckpointer(model, output_dir,
    optimizer=optimizer, scheduler=scheduler) and PeriodicCheckpointer.step(iteration), which calls
    checkpointer.save("model_{:07d}".format(iteration), iteration=iteration). fvcore/common/checkpoint.py
    Checkpointer.save builds {"model": model.state_dict()} + {name: obj.state_dict()} for each checkpointable +
    the extra kwargs, and torch.save's it (detectron2/checkpoint/detection_checkpoint.py adds nothing on save).
    The scheduler is detectron2/solver/lr_scheduler.py LRMultiplier, whose state_dict() is only base_lrs and
    last_epoch; the optimizer is detectron2/solver/build.py's SGD over get_default_optimizer_params groups
    (norm weights with weight_decay_norm=0)."""
    torch.manual_seed(0)
    model = _D2Model()
    norm_params = list(model.backbone.bottom_up.stem.conv1.norm.parameters())
    norm_ids = {id(p) for p in norm_params}
    other = [p for p in model.parameters() if id(p) not in norm_ids]
    optimizer = torch.optim.SGD([{"params": other, "weight_decay": 1e-4}, {"params": norm_params, "weight_decay": 0.0}],
                                lr=0.02, momentum=0.9, nesterov=False)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: min(1.0, (it + 1) / 1000))
    g = torch.Generator().manual_seed(0)
    model.train()
    iteration = 0
    for iteration in range(3):
        x = torch.randn(2, 3, 8, 8, generator=g)
        cls, box, obj = model(x)
        loss = F.cross_entropy(cls, torch.tensor([0, 2])) + box.pow(2).mean() + obj.sigmoid().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sched.step()
    data = {"model": model.state_dict()}
    data["optimizer"] = optimizer.state_dict()
    data["scheduler"] = {"base_lrs": sched.base_lrs, "last_epoch": sched.last_epoch}  # LRMultiplier.state_dict
    data["iteration"] = iteration
    return [save(data, "detectron2.pt")]


# ---- fairseq (not installable here: its pinned omegaconf/hydra do not build on this Python) -------------------------


class _FairseqTiny(nn.Module):
    """Names in a fairseq TransformerModel's layout, with share_decoder_input_output_embed: the decoder's
    output_projection.weight IS embed_tokens.weight (one storage, two state-dict names)."""

    def __init__(self, vocab=12, dim=8):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embed_tokens = nn.Embedding(vocab, dim, padding_idx=1)
        self.encoder.layers = nn.ModuleList([nn.Module()])
        layer = self.encoder.layers[0]
        layer.self_attn = nn.Module()
        layer.self_attn.k_proj = nn.Linear(dim, dim)
        layer.self_attn.v_proj = nn.Linear(dim, dim)
        layer.self_attn.q_proj = nn.Linear(dim, dim)
        layer.self_attn.out_proj = nn.Linear(dim, dim)
        layer.self_attn_layer_norm = nn.LayerNorm(dim)
        layer.fc1 = nn.Linear(dim, 2 * dim)
        layer.fc2 = nn.Linear(2 * dim, dim)
        layer.final_layer_norm = nn.LayerNorm(dim)
        self.decoder = nn.Module()
        self.decoder.embed_tokens = nn.Embedding(vocab, dim, padding_idx=1)
        self.decoder.output_projection = nn.Linear(dim, vocab, bias=False)
        self.decoder.output_projection.weight = self.decoder.embed_tokens.weight

    def forward(self, src, tgt):
        layer = self.encoder.layers[0]
        h = self.encoder.embed_tokens(src)
        q, k, v = layer.self_attn.q_proj(h), layer.self_attn.k_proj(h), layer.self_attn.v_proj(h)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h.shape[-1]), -1) @ v
        h = layer.self_attn_layer_norm(h + layer.self_attn.out_proj(a))
        h = layer.final_layer_norm(h + layer.fc2(F.relu(layer.fc1(h))))
        d = self.decoder.embed_tokens(tgt) + h.mean(1, keepdim=True)
        return self.decoder.output_projection(d)


def make_fairseq():
    """facebookresearch/fairseq fairseq/trainer.py Trainer.state_dict() + save_checkpoint() (called from
    fairseq/checkpoint_utils.py save_checkpoint, which passes extra_state {"train_iterator", "val_loss", "best"}),
    written with checkpoint_utils.torch_persistent_save (torch.save). With --store-ema the EMA model's state dict
    (fairseq/models/ema/ema.py EMA.get_model()) is extra_state["ema"]; ema_fp32 is off (no ema_fp32_params).
    cfg is OmegaConf.to_container(cfg) (plain dicts); the lr scheduler is inverse_sqrt, whose state_dict() is
    {"best": ...}; the optimizer is fairseq's Adam (a torch.optim.Optimizer with torch's state_dict layout)."""
    torch.manual_seed(0)
    model = _FairseqTiny()
    ema = deepcopy(model)
    ema_decay = 0.9
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    num_updates = 0
    model.train()
    for num_updates in range(1, 4):
        src = torch.randint(2, 12, (2, 5), generator=g)
        tgt = torch.randint(2, 12, (2, 4), generator=g)
        loss = F.cross_entropy(model(src, tgt).reshape(-1, 12), tgt.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # fairseq/models/ema/ema.py EMA._step_internal: ema = decay * ema + (1 - decay) * param
            ema_params = ema.state_dict()
            for k, p in model.state_dict().items():
                if p.dtype.is_floating_point:
                    ema_params[k].mul_(ema_decay).add_(p, alpha=1 - ema_decay)
    cfg = {
        "_name": None,
        "common": {"_name": None, "seed": 1, "fp16": False, "log_interval": 100, "log_format": None},
        "distributed_training": {"_name": None, "distributed_world_size": 1, "distributed_rank": 0},
        "dataset": {"_name": None, "max_tokens": 4096, "batch_size": None, "valid_subset": "valid"},
        "optimization": {"_name": None, "max_epoch": 0, "max_update": 3, "lr": [0.0005], "clip_norm": 0.0,
                         "update_freq": [1]},
        "checkpoint": {"_name": None, "save_dir": "checkpoints", "restore_file": "checkpoint_last.pt",
                       "no_save_optimizer_state": False, "best_checkpoint_metric": "loss",
                       "maximize_best_checkpoint_metric": False},
        "model": {"_name": "transformer", "encoder_embed_dim": 8, "encoder_layers": 1, "decoder_layers": 0,
                  "share_decoder_input_output_embed": True, "dropout": 0.1},
        "task": {"_name": "translation", "data": "data-bin/tiny", "source_lang": "de", "target_lang": "en"},
        "criterion": {"_name": "cross_entropy", "sentence_avg": False},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-08, "weight_decay": 0.0,
                      "lr": [0.0005]},
        "lr_scheduler": {"_name": "inverse_sqrt", "warmup_updates": 4000, "warmup_init_lr": -1.0, "lr": [0.0005]},
        "ema": {"_name": None, "store_ema": True, "ema_decay": ema_decay, "ema_start_update": 0,
                "ema_seed_model": None, "ema_update_freq": 1, "ema_fp32": False},
    }
    state_dict = {
        "args": None,
        "cfg": cfg,
        "model": model.state_dict(),
        "criterion": None,  # cross_entropy has no parameters
        "optimizer_history": [{
            "criterion_name": "CrossEntropyCriterion",
            "optimizer_name": "FairseqAdam",
            "lr_scheduler_state": {"best": 2.1563},
            "num_updates": num_updates,
        }],
        "task_state": {},
        "extra_state": {
            "metrics": collections.OrderedDict([  # fairseq/logging/metrics.py state_dict(): per aggregator
                ("default", [("loss", 0, "AverageMeter", {"val": 2.1563, "sum": 6.4689, "count": 3, "round": 3}),
                             ("wall", 0, "StopwatchMeter", {"start": None, "sum": 1.5, "n": 3, "round": 0})]),
            ]),
            "previous_training_time": 1.5,
        },
    }
    state_dict["extra_state"]["ema"] = ema.state_dict()
    state_dict["last_optimizer_state"] = optimizer.state_dict()
    state_dict["extra_state"].update({"train_iterator": {"epoch": 1, "iterations_in_epoch": 3, "shuffle": True},
                                      "val_loss": 2.1563, "best": 2.1563})
    return [save(state_dict, "fairseq.pt")]


# ---- Stable Diffusion / LDM (not installable here: the CompVis codebase is not a package) ------------------------


class _LitEma(nn.Module):
    """CompVis/stable-diffusion ldm/modules/ema.py LitEma, as it names things: buffers `decay` (float32) and
    `num_updates` (int32), then one buffer per trainable parameter of the wrapped model named with the dots removed.
    Update rule as its forward(): decay = min(decay, (1 + n) / (10 + n)), shadow -= (1 - decay) * (shadow - param)."""

    def __init__(self, model, decay=0.9999):
        super().__init__()
        self.m_name2s_name = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.int))
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.clone().detach().data)

    @torch.no_grad()
    def update(self, model):
        self.num_updates += 1
        decay = min(self.decay.item(), (1 + self.num_updates.item()) / (10 + self.num_updates.item()))
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if p.requires_grad:
                s = shadow[self.m_name2s_name[name]]
                s.sub_((1.0 - decay) * (s - p))


class _LatentDiffusion(nn.Module):
    """ldm/models/diffusion/ddpm.py LatentDiffusion's state-dict layout, tiny: schedule buffers registered on the
    module itself (DDPM.register_schedule: betas, alphas_cumprod, ...; LatentDiffusion: scale_factor), then
    `model` (DiffusionWrapper holding `diffusion_model`, the UNet), `model_ema` (LitEma of `model`),
    `first_stage_model` (the autoencoder, frozen) and `cond_stage_model` (the text encoder, frozen)."""

    def __init__(self, timesteps=10):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = nn.Module()
        unet = self.model.diffusion_model
        unet.time_embed = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 8))
        unet.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))])
        unet.out = nn.Sequential(nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 4, 3, padding=1))
        self.model_ema = _LitEma(self.model)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("alphas_cumprod_prev", torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]).float())
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float())
        self.register_buffer("scale_factor", torch.tensor(0.18215))
        self.first_stage_model = nn.Module()
        self.first_stage_model.encoder = nn.Module()
        self.first_stage_model.encoder.conv_in = nn.Conv2d(3, 4, 3, padding=1)
        self.first_stage_model.decoder = nn.Module()
        self.first_stage_model.decoder.conv_out = nn.Conv2d(4, 3, 3, padding=1)
        self.first_stage_model.quant_conv = nn.Conv2d(8, 8, 1)
        self.first_stage_model.post_quant_conv = nn.Conv2d(4, 4, 1)
        self.cond_stage_model = nn.Module()
        self.cond_stage_model.transformer = nn.Module()
        self.cond_stage_model.transformer.text_model = nn.Module()
        tm = self.cond_stage_model.transformer.text_model
        tm.embeddings = nn.Module()
        tm.embeddings.token_embedding = nn.Embedding(10, 4)
        tm.final_layer_norm = nn.LayerNorm(4)
        for m in (self.first_stage_model, self.cond_stage_model):  # instantiate_first/cond_stage: frozen
            for p in m.parameters():
                p.requires_grad = False

    def forward(self, z, t):
        unet = self.model.diffusion_model
        temb = unet.time_embed(F.one_hot(t, 4).float())
        h = unet.input_blocks[0](z) + temb[:, :, None, None]
        return unet.out(h)


def make_ldm():
    """A Stable Diffusion (CompVis/stable-diffusion) training checkpoint: main.py trains LatentDiffusion with
    pytorch-lightning 1.4.2 (environment.yaml) and ModelCheckpoint; Lightning 1.4's dump_checkpoint
    (pytorch_lightning/trainer/connectors/checkpoint_connector.py) writes epoch, global_step,
    pytorch-lightning_version, state_dict, callbacks (keyed by the callback's class), optimizer_states,
    lr_schedulers. LatentDiffusion.configure_optimizers: AdamW over the UNet's parameters, a LambdaLR with
    interval "step"; on_train_batch_end: self.model_ema(self.model) (ddpm.py DDPM.on_train_batch_end)."""
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint as PLModelCheckpoint

    torch.manual_seed(0)
    ldm = _LatentDiffusion()
    optimizer = torch.optim.AdamW(list(ldm.model.parameters()), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: min(1.0, (step + 1) / 100))
    g = torch.Generator().manual_seed(0)
    ldm.train()
    for step in range(3):
        z = torch.randn(2, 4, 4, 4, generator=g)
        t = torch.randint(0, 4, (2,), generator=g)
        noise = torch.randn(2, 4, 4, 4, generator=g)
        loss = F.mse_loss(ldm(z, t), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        ldm.model_ema.update(ldm.model)
    global_step, epoch = 3, 0
    checkpoint = {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": ldm.state_dict(),
        "callbacks": {PLModelCheckpoint: {  # ModelCheckpoint.on_save_checkpoint (1.4)
            "monitor": None, "best_model_score": None, "best_model_path": "",
            "current_score": None, "dirpath": "logs/2024-05-01T12-34-56_txt2img-tiny/checkpoints"}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
    }
    return [save(checkpoint, "ldm.pt")]


MAKERS = [make_lightning, make_timm, make_mmengine, make_hf_trainer, make_torchvision_reference, make_detectron2,
          make_fairseq, make_ldm]

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    for make in MAKERS:
        for p in make():
            size = os.path.getsize(p) if os.path.isfile(p) else sum(
                os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
            print(f"{os.path.relpath(p)}: {size} bytes")
