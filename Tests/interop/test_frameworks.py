"""ckpt on checkpoints written by each training framework's own code (fixtures/frameworks/, made by
scripts/make-framework-fixtures.py), compared with torch and, where the framework is installed, with its own loader.

What strip removes, keeps and maps for each framework is docs/frameworks.md; FRAMEWORKS below is that document as one
table, and every expectation in this file is derived from it applied by torch to torch.load of the input.
"""
import argparse
import json
import os
import sys

import numpy as np
import pytest
import torch

from viewlib import bits, same_tensor
from conftest import FIXTURES, ROOT, assert_clean_failure, run, run_json, weights_only_loads
from plainlib import python_plain

FW = FIXTURES / "frameworks"
HF_CHECKPOINT = FW / "hf-trainer" / "checkpoint-3"

sys.path.insert(0, str(ROOT / "scripts"))
import torchvision_ops  # noqa: E402

torchvision_ops.declare()  # timm, lightning and transformers import torchvision (PyPI's CUDA build)
pytestmark = pytest.mark.filterwarnings("ignore")  # the frameworks' deprecation chatter

# docs/frameworks.md as a table. Per fixture:
#   id        the framework id `ckpt info` names and `--framework` takes
#   weights   the weights record (`keys` lists it; strip keeps it)
#   removed   the records strip removes ("a.b": key b inside record a, "a.p*": keys starting p inside record a);
#             absent ones are simply not there
#   bare      True: the output is the weights record's state dict alone, `module.`/`_orig_mod.` stripped (timm's
#             clean_checkpoint.py); removed and --drop-record/--keep-record then have nothing to act on
#   ema       how --use-ema finds the EMA: None (no EMA), "in-weights" (the framework already saved the EMA in the
#             weights record: output weights = input weights), ("record", R) (R holds the EMA under the model's
#             names), ("averaged", R) (torch AveragedModel state dict: `module.` + names, plus n_averaged),
#             ("ldm", None) (LitEma buffers model_ema.<name without dots> inside the weights record)
LIGHTNING_STATE = ["loops", "callbacks", "optimizer_states", "lr_schedulers", "MixedPrecision", "current_model_state",
                   "averaging_state"]
FRAMEWORKS = {
    "lightning.pt": dict(id="lightning", weights="state_dict", removed=LIGHTNING_STATE, ema=None),
    "lightning-ema.pt": dict(id="lightning", weights="state_dict", removed=LIGHTNING_STATE, ema="in-weights"),
    "lightning-amp.pt": dict(id="lightning", weights="state_dict", removed=LIGHTNING_STATE, ema=None),
    "ldm.pt": dict(id="ldm", weights="state_dict", removed=LIGHTNING_STATE + ["state_dict.model_ema.*"],
                   ema=("ldm", None)),
    "timm.pt": dict(id="timm", weights="state_dict", removed=[], bare=True, ema=("record", "state_dict_ema")),
    "mmengine-ema.pt": dict(id="mmengine", weights="state_dict",
                            removed=["optimizer", "param_schedulers", "message_hub", "ema_state_dict"],
                            ema="in-weights"),
    "torchvision-ref.pt": dict(id="torchvision", weights="model",
                               removed=["optimizer", "lr_scheduler", "scaler", "model_ema"],
                               ema=("averaged", "model_ema")),
    "detectron2.pt": dict(id="detectron2", weights="model", removed=["optimizer", "scheduler"], ema=None),
    "fairseq.pt": dict(id="fairseq", weights="model",
                       removed=["last_optimizer_state", "extra_state.ema", "extra_state.ema_fp32_params"],
                       ema=("record", "extra_state.ema")),
}
NAMES = list(FRAMEWORKS)
WITH_EMA = [n for n in NAMES if FRAMEWORKS[n]["ema"] is not None]


# ---- torch's side -----------------------------------------------------------------------------------------------


def load(path, **kw):
    kw.setdefault("weights_only", False)
    return torch.load(path, map_location="cpu", **kw)


_SOURCES = {}


def source(name):
    """torch.load of a fixture, once per module (callers copy before changing it)."""
    if name not in _SOURCES:
        _SOURCES[name] = load(FW / name)
    return _SOURCES[name]


def get(x, dotted):
    for part in dotted.split("."):
        x = x[part]
    return x


def ema_weights(src, spec):
    """The EMA under the model's own names, as torch gives it from the input (docs/frameworks.md, --use-ema)."""
    fw = FRAMEWORKS[spec]
    weights = src[fw["weights"]]
    rule = fw["ema"]
    if rule == "in-weights":
        return dict(weights)
    kind, record = rule
    if kind == "record":
        return dict(get(src, record))
    if kind == "averaged":  # torch.optim.swa_utils.AveragedModel: module.<name>, n_averaged
        return {k[len("module."):]: v for k, v in get(src, record).items() if k.startswith("module.")}
    if kind == "ldm":  # ldm/modules/ema.py LitEma: model_ema.<name in self.model with the dots removed>
        out = {}
        for k, v in weights.items():
            if k.startswith("model_ema."):
                continue
            ema_key = "model_ema." + k[len("model."):].replace(".", "") if k.startswith("model.") else None
            out[k] = weights[ema_key] if ema_key in weights else v
        return out
    raise AssertionError(rule)


def remove(x, dotted):
    head, _, rest = dotted.partition(".")
    if head not in x:
        return x
    if not rest:
        return {k: v for k, v in x.items() if k != head}
    inner = x[head]
    if isinstance(inner, dict):
        x = dict(x)
        if rest.endswith("*"):
            x[head] = {k: v for k, v in inner.items() if not k.startswith(rest[:-1])}
        else:
            x[head] = {k: v for k, v in inner.items() if k != rest}
    return x


def clean_state_dict(sd):
    """timm/models/_helpers.py clean_state_dict: `module.` and `_orig_mod.` prefixes off."""
    out = {}
    for k, v in sd.items():
        k = k[7:] if k.startswith("module.") else k
        k = k[10:] if k.startswith("_orig_mod.") else k
        out[k] = v
    return out


def expected_strip(name, use_ema=False, drop=(), keep=()):
    """docs/frameworks.md's strip of fixture NAME, applied by torch to torch.load of it."""
    fw = FRAMEWORKS[name]
    x = dict(source(name))
    if use_ema and fw["ema"] is not None:
        x[fw["weights"]] = ema_weights(x, name)
    if fw.get("bare"):
        return clean_state_dict(x[fw["weights"]])
    for r in fw["removed"] + list(drop):
        if r not in keep:
            x = remove(x, r)
    return x




def same_weights(want, got, where):
    """Per name: torch.equal bit for bit, dtype, shape; the same names in the same order."""
    assert list(got) == list(want), f"{where}: names {list(got)} != {list(want)}"
    for k in want:
        same_tensor(want[k], got[k], f"{where}[{k}]")


def same_value(a, b, where):
    if torch.is_tensor(a):
        same_tensor(a, b, where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(b) == list(a), f"{where}: keys {list(b)} != {list(a)}"
        for k in a:
            same_value(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(b) is type(a) and len(a) == len(b), f"{where}: {b!r} != {a!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            same_value(x, y, f"{where}.{i}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif type(a).__module__ not in ("builtins", "numpy") and hasattr(a, "__dict__"):
        # objects (argparse.Namespace, mmengine's HistoryBuffer, Counter is a dict): same class, same attributes
        assert type(b) is type(a), f"{where}: {type(b)} != {type(a)}"
        same_value(vars(a), vars(b), f"{where}.__dict__")
    else:
        assert type(b) is type(a) and b == a, f"{where}: {b!r} != {a!r}"


def same_checkpoint(want, got, weights):
    assert list(got) == list(want), f"records {list(got)} != {list(want)}"
    for k in want:
        if k == weights:
            same_weights(want[k], got[k], k)
        else:
            same_value(want[k], got[k], k)


def storage_groups(sd):
    groups = {}
    for k, v in sd.items():
        groups.setdefault((v.untyped_storage().data_ptr(), v.untyped_storage().nbytes()), []).append(k)
    return sorted(g for g in groups.values() if len(g) > 1)


def torch_verdict_weights_only(obj, tmp_path):
    """torch's own answer: does torch.save(obj) load with weights_only=True?"""
    p = tmp_path / "torch-verdict.pt"
    torch.save(obj, p)
    return weights_only_loads(p)


def strip(tmp_path, name, *opts, out="out.pt"):
    dst = tmp_path / out
    p = run("strip", FW / name if isinstance(name, str) else name, dst, *opts)
    assert p.returncode == 0, f"ckpt strip {name} {' '.join(opts)} exited {p.returncode}: {p.stderr}"
    return dst


def weights_of(name, x):
    """The weights record of a strip output (the output itself when the framework publishes a bare state dict)."""
    return x if FRAMEWORKS[name].get("bare") else x[FRAMEWORKS[name]["weights"]]


def check_output(name, out, want, tmp_path):
    weights = FRAMEWORKS[name]["weights"]

    def same(got):
        if FRAMEWORKS[name].get("bare"):
            same_weights(want, got, "state dict")
        else:
            same_checkpoint(want, got, weights)

    same(load(out))
    same(load(out, mmap=True))
    assert weights_only_loads(out) == torch_verdict_weights_only(want, tmp_path), \
        "weights_only=True verdict differs from torch's on the expected dict"
    if weights_only_loads(out):
        same(load(out, mmap=True, weights_only=True))
    assert storage_groups(weights_of(name, load(out))) == storage_groups(weights_of(name, want)), \
        "tied weights no longer share"


# ---- info -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_info_names_the_framework(name):
    fw = run_json("info", FW / name)["framework"]
    assert fw["id"] == FRAMEWORKS[name]["id"]
    assert isinstance(fw["name"], str) and fw["name"]
    assert fw["evidence"] and all(isinstance(e, str) and e for e in fw["evidence"])
    text = run("info", FW / name, check=0).stdout.splitlines()
    line = [x for x in text if x.startswith("framework:")]
    assert len(line) == 1 and (fw["id"] in line[0] or fw["name"] in line[0]), text


def test_info_names_the_hf_trainer_folder():
    fw = run_json("info", HF_CHECKPOINT)["framework"]
    assert fw["id"] == "hf-trainer" and fw["evidence"]
    assert any(x.startswith("framework:") for x in run("info", HF_CHECKPOINT, check=0).stdout.splitlines())


def test_info_without_framework_evidence_names_none(tmp_path):
    """A bare state dict is no framework's: no framework is claimed."""
    p = tmp_path / "sd.pt"
    torch.save(source("detectron2.pt")["model"], p)
    assert run_json("info", p).get("framework") is None
    ids = {f["id"] for f in FRAMEWORKS.values()} | {"hf-trainer", "yolov5", "ultralytics"}
    for line in run("info", p, check=0).stdout.splitlines():
        if line.startswith("framework:"):  # may say that none is recognised, never name one
            assert not any(i in line.split() for i in ids), line


# ---- keys -------------------------------------------------------------------------------------------------------


def listing(sd):
    return [{"name": k, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in sd.items()]


@pytest.mark.parametrize("name", NAMES)
def test_keys_lists_the_model_weights(name):
    """The model's weights as torch gives them from the weights record, minus what is no weight of the model (LDM's
    model_ema.* entries: what a plain strip removes from the record); --record lists the whole record."""
    record = FRAMEWORKS[name]["weights"]
    weights = source(name)[record]
    want = weights if FRAMEWORKS[name].get("bare") else expected_strip(name)[record]
    assert run_json("keys", FW / name) == listing(want)
    assert run_json("keys", FW / name, "--record", record) == listing(weights)


@pytest.mark.parametrize("name", NAMES)
def test_convert_layers_and_transfer_read_the_same_weights(tmp_path, name):
    """convert, layers and transfer take the model's weights as keys lists them (the same table): convert writes exactly
    those tensors, layers counts exactly their parameters, transfer of the file into itself fills exactly them."""
    from safetensors.torch import load_file

    record = FRAMEWORKS[name]["weights"]
    want = source(name)[record] if FRAMEWORKS[name].get("bare") else expected_strip(name)[record]
    out = tmp_path / "w.safetensors"
    run("convert", FW / name, out, check=0)
    got = load_file(out)
    assert set(got) <= set(want) and set(want) - set(got) <= aliases(want), sorted(set(want) ^ set(got))
    for k in got:
        same_tensor(want[k], got[k], k)
    report = run_json("transfer", FW / name, FW / name, tmp_path / "t.pt")
    assert sorted(report["transferred_keys"]) == sorted(want) and report["unused_from"] == []
    layers = run_json("layers", FW / name)
    assert layers["record"] == record


def aliases(sd):
    """Names safetensors' convert leaves out as aliases of another name viewing the same storage (tied weights)."""
    groups = storage_groups(sd)
    return {k for g in groups for k in g[1:]}


# ---- strip, --use-ema, --state-dict ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_strip_removes_exactly_the_training_state(tmp_path, name):
    out = strip(tmp_path, name)
    want = expected_strip(name)
    check_output(name, out, want, tmp_path)
    # the weights are the input's, bit for bit, under the same names
    src = clean_state_dict(source(name)[FRAMEWORKS[name]["weights"]])
    got = weights_of(name, load(out))
    assert got and set(got) <= set(src)
    for k, v in got.items():
        same_tensor(src[k], v, k)


@pytest.mark.parametrize("name", WITH_EMA)
def test_strip_use_ema_gives_the_ema_under_the_model_names(tmp_path, name):
    out = strip(tmp_path, name, "--use-ema")
    want = expected_strip(name, use_ema=True)
    check_output(name, out, want, tmp_path)
    got = weights_of(name, load(out))
    same_weights(ema_weights(source(name), name), got, "EMA weights")
    if FRAMEWORKS[name]["ema"] == "in-weights":  # mmengine, Lightning EMAWeightAveraging: already the EMA
        same_weights(source(name)[FRAMEWORKS[name]["weights"]], got, "weights")


def test_ema_rules_are_not_trivial():
    """The fixtures' EMA values differ from the live weights (else the --use-ema tests could not fail)."""
    for name in WITH_EMA:
        src = source(name)
        fw = FRAMEWORKS[name]
        ema = ema_weights(src, name)
        if fw["ema"] == "in-weights":
            live = {"lightning-ema.pt": lambda: src["current_model_state"],
                    "mmengine-ema.pt": lambda: {k[7:]: v for k, v in src["ema_state_dict"].items() if k != "steps"}}[name]()
        else:
            live = {k: v for k, v in src[fw["weights"]].items() if not k.startswith("model_ema.")}
        assert list(live) == list(ema), name
        assert any(v.is_floating_point() and not torch.equal(v, ema[k]) for k, v in live.items()), name


@pytest.mark.parametrize("name", NAMES)
def test_strip_state_dict_loads_weights_only(tmp_path, name):
    out = strip(tmp_path, name, "--state-dict")
    # every record here already holds state dicts; what weights_only refuses (torchvision's args, an
    # argparse.Namespace) becomes plain data as Python converts it (vars(args))
    want = python_plain(expected_strip(name))
    check_output(name, out, want, tmp_path)
    assert torch_verdict_weights_only(want, tmp_path)
    got = load(out, weights_only=True)
    same_weights(weights_of(name, want), weights_of(name, got), "weights")


def test_stripped_fairseq_keeps_the_tied_embedding_shared(tmp_path):
    sd = load(strip(tmp_path, "fairseq.pt"))["model"]
    w, p = sd["decoder.embed_tokens.weight"], sd["decoder.output_projection.weight"]
    assert w.untyped_storage().data_ptr() == p.untyped_storage().data_ptr()


# ---- --framework, --drop-record, --keep-record, unknown training state --------------------------------------------


@pytest.mark.parametrize("name,framework", [("detectron2.pt", "torchvision"), ("detectron2.pt", "fairseq"),
                                            ("lightning.pt", "ldm"), ("ldm.pt", "lightning")])
def test_framework_override_is_reported(name, framework):
    """--framework names the convention to follow whatever the detection says (here: one with the same weights
    record)."""
    assert run_json("info", FW / name)["framework"]["id"] != framework
    fw = run_json("info", FW / name, "--framework", framework)["framework"]
    assert fw["id"] == framework and fw["evidence"]


def test_framework_override_drives_the_ema_mapping(tmp_path):
    """A file with no framework evidence (no args, no scaler) stripped by torchvision's rules: model_ema (module. +
    n_averaged) becomes the model."""
    src = source("torchvision-ref.pt")
    x = {"model": src["model"], "model_ema": src["model_ema"], "optimizer": src["optimizer"], "epoch": 1}
    p = tmp_path / "in.pt"
    torch.save(x, p)
    out = tmp_path / "out.pt"
    run("strip", p, out, "--framework", "torchvision", "--use-ema", check=0)
    got = load(out, weights_only=True)
    assert list(got) == ["model", "epoch"]
    same_weights(ema_weights(src, "torchvision-ref.pt"), got["model"], "model")


def test_unknown_framework_is_refused(tmp_path):
    p = run("strip", FW / "timm.pt", tmp_path / "o.pt", "--framework", "no-such-framework")
    assert_clean_failure(p)
    assert "no-such-framework" in p.stderr and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("name,record", [("lightning.pt", "optimizer_states"), ("torchvision-ref.pt", "model_ema"),
                                         ("mmengine-ema.pt", "message_hub"), ("fairseq.pt", "last_optimizer_state")])
def test_keep_record_keeps_a_training_record(tmp_path, name, record):
    out = strip(tmp_path, name, "--keep-record", record)
    want = expected_strip(name, keep=[record])
    assert record in want
    same_checkpoint(want, load(out), FRAMEWORKS[name]["weights"])


@pytest.mark.parametrize("name,record", [("lightning.pt", "hyper_parameters"), ("torchvision-ref.pt", "args"),
                                         ("detectron2.pt", "iteration"), ("ldm.pt", "global_step"),
                                         ("mmengine-ema.pt", "meta")])
def test_drop_record_removes_any_record(tmp_path, name, record):
    out = strip(tmp_path, name, "--drop-record", record)
    want = expected_strip(name, drop=[record])
    assert record in source(name) and record not in want
    same_checkpoint(want, load(out), FRAMEWORKS[name]["weights"])


def test_unlisted_training_state_is_kept_and_reported(tmp_path):
    src = dict(source("detectron2.pt"))
    src["foo_optimizer_state"] = src["optimizer"]
    p = tmp_path / "in.pt"
    torch.save(src, p)
    out = tmp_path / "out.pt"
    r = run("strip", p, out)
    assert r.returncode == 0, r.stderr
    assert "--drop-record foo_optimizer_state" in r.stderr
    got = load(out)
    same_value(src["foo_optimizer_state"], got["foo_optimizer_state"], "foo_optimizer_state")
    assert "optimizer" not in got
    r = run("strip", p, out, "--drop-record", "foo_optimizer_state")
    assert r.returncode == 0 and "foo_optimizer_state" not in load(out)
    assert "--drop-record foo_optimizer_state" not in r.stderr


# ---- the frameworks' own loaders take the output --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lightning.pt", "lightning-ema.pt", "lightning-amp.pt"])
@pytest.mark.parametrize("opts", [[], ["--use-ema"], ["--state-dict"]], ids=lambda o: " ".join(o) or "plain")
def test_lightning_load_from_checkpoint_takes_the_output(tmp_path, name, opts):
    pytest.importorskip("lightning")
    from fw_models import TinyLitModel

    out = strip(tmp_path, name, *opts)
    model = TinyLitModel.load_from_checkpoint(out)
    assert dict(model.hparams) == source(name)["hyper_parameters"]
    same_weights(expected_strip(name, use_ema="--use-ema" in opts)["state_dict"], model.state_dict(), "model")


@pytest.mark.parametrize("name", ["ldm.pt", "lightning.pt"])
def test_lightning_migrations_take_the_output(tmp_path, name):
    """load_from_checkpoint first runs Lightning's checkpoint migrations (utilities/migration/utils.py
    _pl_migrate_checkpoint); for a Lightning 1.4 file (LDM) those of 1.6.0 and 1.6.5 read `global_step` and `epoch`,
    which strip therefore keeps."""
    pytest.importorskip("lightning")
    from lightning.pytorch.utilities.migration.utils import _pl_migrate_checkpoint

    out = strip(tmp_path, name)
    migrated = _pl_migrate_checkpoint(load(out))
    if name == "ldm.pt":  # the 1.6.0 migration rebuilt the loop state from epoch
        assert migrated["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == source(name)["epoch"]
    same_weights(expected_strip(name)["state_dict"], migrated["state_dict"], "state_dict")


@pytest.mark.parametrize("opts", [[], ["--use-ema"]], ids=lambda o: " ".join(o) or "plain")
def test_timm_create_model_takes_the_output(tmp_path, opts):
    timm = pytest.importorskip("timm")
    from fw_models import TIMM_ARCH, TIMM_KWARGS

    out = strip(tmp_path, "timm.pt", *opts)
    model = timm.create_model(TIMM_ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(out), num_classes=3),
                              **TIMM_KWARGS)
    want = source("timm.pt")["state_dict_ema" if opts else "state_dict"]
    same_weights(want, model.state_dict(), "model")
    # timm's load_checkpoint prefers state_dict_ema when present: a plain strip must not leave it
    m2 = timm.create_model(TIMM_ARCH, **TIMM_KWARGS)
    timm.models.load_checkpoint(m2, str(out))
    same_weights(want, m2.state_dict(), "load_checkpoint")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_timm_strip_drops_the_wrapper_prefixes(tmp_path, prefix):
    """A CheckpointSaver file from a DDP or torch.compile model saved without unwrapping (older timm, or
    unwrap_fn=None): clean_checkpoint.py / clean_state_dict strip `module.` and `_orig_mod.`."""
    src = dict(source("timm.pt"))
    src["state_dict"] = {prefix + k: v for k, v in src["state_dict"].items()}
    src["state_dict_ema"] = {prefix + k: v for k, v in src["state_dict_ema"].items()}
    p = tmp_path / "in.pt"
    torch.save(src, p)
    for opts, record in (([], "state_dict"), (["--use-ema"], "state_dict_ema")):
        out = strip(tmp_path, p, *opts)
        got = load(out, weights_only=True)
        same_weights(source("timm.pt")[record], got, record)


@pytest.mark.parametrize("opts", [[], ["--use-ema"]], ids=lambda o: " ".join(o) or "plain")
def test_mmengine_load_checkpoint_takes_the_output(tmp_path, opts):
    pytest.importorskip("mmengine")
    from mmengine.runner import load_checkpoint

    from fw_models import mmengine_classes

    out = strip(tmp_path, "mmengine-ema.pt", *opts)
    # what open-mmlab's publish_model.py keeps (save_keys meta, state_dict) is what strip keeps
    assert list(load(out)) == [k for k in source("mmengine-ema.pt") if k in ("meta", "state_dict")]
    tiny_mm, _ = mmengine_classes()
    model = tiny_mm()
    load_checkpoint(model, str(out), strict=True)
    same_weights(source("mmengine-ema.pt")["state_dict"], model.state_dict(), "model")


# ---- Hugging Face Trainer folders -------------------------------------------------------------------------------


def hf_weights():
    from safetensors.torch import load_file

    return load_file(HF_CHECKPOINT / "model.safetensors")


def test_keys_and_info_read_a_trainer_folder():
    assert run_json("keys", HF_CHECKPOINT) == listing(hf_weights())
    info = run_json("info", HF_CHECKPOINT)
    n = sum(v.numel() for v in hf_weights().values())
    assert any(r.get("elements") == n for r in info["records"]), info["records"]


def test_strip_trainer_folder_to_safetensors(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "w.safetensors"
    run("strip", HF_CHECKPOINT, out, check=0)
    same_weights(hf_weights(), load_file(out), "weights")


def test_strip_trainer_folder_to_pt(tmp_path):
    out = tmp_path / "w.pt"
    run("strip", HF_CHECKPOINT, out, check=0)
    same_weights(hf_weights(), load(out, weights_only=True), "weights")
    same_weights(hf_weights(), load(out, weights_only=True, mmap=True), "weights")


def test_strip_trainer_folder_to_a_folder_save_pretrained_would_write(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    out = tmp_path / "published"
    run("strip", HF_CHECKPOINT, out, check=0)
    # what save_pretrained writes for this model, by transformers itself
    ref = tmp_path / "ref"
    model = transformers.AutoModelForCausalLM.from_pretrained(HF_CHECKPOINT)
    model.save_pretrained(ref)
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    for f in ("config.json", "generation_config.json"):
        assert json.loads((out / f).read_text()) == json.loads((HF_CHECKPOINT / f).read_text()), f
    same_weights(hf_weights(), load_file(out / "model.safetensors"), "model.safetensors")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    for k, v in model.state_dict().items():  # lm_head.weight is tied to transformer.wte.weight on both sides
        same_tensor(v, loaded.state_dict()[k], k)
    base = transformers.AutoModel.from_pretrained(out)  # the bare GPT2Model: names without `transformer.`
    for k, v in base.state_dict().items():
        same_tensor(hf_weights()["transformer." + k], v, k)


def test_strip_trainer_folder_leaves_the_input_alone(tmp_path):
    before = {f: (HF_CHECKPOINT / f).read_bytes() for f in os.listdir(HF_CHECKPOINT)}
    run("strip", HF_CHECKPOINT, tmp_path / "w.safetensors", check=0)
    run("strip", HF_CHECKPOINT, tmp_path / "dir", check=0)
    assert {f: (HF_CHECKPOINT / f).read_bytes() for f in os.listdir(HF_CHECKPOINT)} == before


# ---- the committed fixtures are what the script writes -------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_committed_facts_match_torch(name):
    import torch_facts

    want = json.loads((FW / name).with_suffix(".facts.json").read_text())
    assert torch_facts.facts(str(FW / name))["state_dicts"] == want["state_dicts"], "stale facts: rerun the script"
