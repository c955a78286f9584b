"""Hugging Face Trainer checkpoint folders (issue 13 point 2): `keys`, `info` and `strip` of a real `checkpoint-N/`
folder written by transformers' own Trainer, compared with safetensors, torch and transformers' from_pretrained.

transformers runs in subprocesses: importing it (and its model classes) in the test process would change what later
tests see, and the venv's torchvision may not match torch's build (a text model needs none, so the scripts hide it)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import assert_clean_failure, run, run_json

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

# Hidden before transformers is imported: a torchvision wheel built for another torch fails at import, and
# transformers imports it whenever it is installed. A GPT-2 needs none of it.
PRELUDE = 'import sys; sys.modules["torchvision"] = None\n'

# transformers' own Trainer: a GPT-2 small enough for KBs (tied input and output embeddings, as GPT-2 has), 4 real
# AdamW steps, a checkpoint every 2 steps (checkpoint-2/, checkpoint-4/), as Trainer._save_checkpoint writes them.
TRAIN = PRELUDE + textwrap.dedent("""
    import torch
    from torch.utils.data import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    out = sys.argv[1]
    torch.manual_seed(0)
    config = GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=32, n_positions=16, tie_word_embeddings=True)
    model = GPT2LMHeadModel(config)

    class Tokens(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            ids = (torch.arange(8) + i) % 32
            return {"input_ids": ids, "labels": ids}

    args = TrainingArguments(output_dir=out, max_steps=4, save_steps=2, per_device_train_batch_size=2, report_to=[],
                             use_cpu=True, logging_steps=1, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Tokens()).train()
""")

# The same weights as save_pretrained shards them (max_shard_size small enough for three shards and an index).
SHARD = PRELUDE + textwrap.dedent("""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    model.save_pretrained(sys.argv[2], max_shard_size="2KB")
""")

# transformers loads a folder and reports its state_dict (saved with torch.save for the test to compare) and whether
# the output embedding is still the input embedding's tensor.
LOAD = PRELUDE + textwrap.dedent("""
    import json, torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, sys.argv[2])
    print(json.dumps({
        "tied": model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(),
        "dtype": str(model.dtype),
    }))
""")


def python(script, *args):
    p = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def folder_hash(path):
    """Every entry under a folder, with its bytes and mode: what "never modified" means."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files) + [d + "/" for d in dirs]:
            full = os.path.join(root, name.rstrip("/"))
            st = os.lstat(full)
            h.update(f"{os.path.relpath(full, path)}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if not name.endswith("/"):
                with open(full, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer") / "run"
    python(TRAIN, out)
    return out


@pytest.fixture(scope="module")
def ckpt_dir(run_dir):
    """checkpoint-4/ of the run, checked to hold what Trainer._save_checkpoint writes."""
    d = run_dir / "checkpoint-4"
    names = set(os.listdir(d))
    assert {"model.safetensors", "config.json", "generation_config.json", "optimizer.pt", "scheduler.pt",
            "rng_state.pth", "trainer_state.json", "training_args.bin"} <= names, names
    return d


@pytest.fixture(scope="module")
def sharded_dir(ckpt_dir, tmp_path_factory):
    """The checkpoint with its weights as save_pretrained shards them: the index and its shards replace
    model.safetensors, the training state stays."""
    d = tmp_path_factory.mktemp("sharded") / "checkpoint-4"
    python(SHARD, ckpt_dir, d)
    assert "model.safetensors.index.json" in os.listdir(d) and "model.safetensors" not in os.listdir(d)
    for name in os.listdir(ckpt_dir):
        if name not in ("model.safetensors", "config.json", "generation_config.json"):
            shutil.copy2(ckpt_dir / name, d / name)
    return d


def reference(folder):
    """The weights as safetensors loads them: every file the folder's weights are (one file, or the shards)."""
    if (folder / "model.safetensors").exists():
        return load_file(folder / "model.safetensors")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(folder / shard))
    return out


def loaded(folder, tmp_path):
    """What transformers' from_pretrained gives for a folder: (state_dict, facts)."""
    sd = tmp_path / f"sd-{folder.name}-{os.getpid()}.pt"
    facts = json.loads(python(LOAD, folder, sd).strip().splitlines()[-1])
    return torch.load(sd, weights_only=True), facts


def same_tensors(a, b):
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def unchanged(ckpt_dir):
    """Asserts after the test that the input folder is exactly as it was."""
    before = folder_hash(ckpt_dir)
    yield
    assert folder_hash(ckpt_dir) == before, "the input folder changed"


def no_temps(folder):
    left = [n for n in os.listdir(folder) if ".ckpt-tmp-" in n]
    assert not left, left


# --- keys and info read the weights ------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["single", "sharded"])
def test_keys_are_the_weights(which, ckpt_dir, sharded_dir):
    folder = ckpt_dir if which == "single" else sharded_dir
    ref = reference(folder)
    keys = run_json("keys", str(folder) + "/")
    assert sorted(k["name"] for k in keys) == sorted(ref)
    for k in keys:
        t = ref[k["name"]]
        assert k["dtype"] == str(t.dtype).removeprefix("torch.")
        assert k["shape"] == list(t.shape)
    # Tied weights are written once, as transformers writes them: the output embedding is not in the file.
    assert "lm_head.weight" not in {k["name"] for k in keys}
    assert "transformer.wte.weight" in {k["name"] for k in keys}


def test_info_names_the_trainer_files(ckpt_dir):
    info = run_json("info", ckpt_dir)
    ref = reference(ckpt_dir)
    assert info["records"][0]["tensors"] == len(ref)
    assert info["records"][0]["elements"] == sum(t.numel() for t in ref.values())
    tf = info["trainer_folder"]
    sizes = {n: os.path.getsize(ckpt_dir / n) for n in os.listdir(ckpt_dir)}
    assert [f["name"] for f in tf["weights"]] == ["model.safetensors"]
    assert [f["name"] for f in tf["config"]] == ["config.json", "generation_config.json"]
    state = {f["name"] for f in tf["training_state"]}
    assert state == set(sizes) - {"model.safetensors", "config.json", "generation_config.json"}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"} <= state
    for group in ("weights", "config", "training_state", "other"):
        for f in tf[group]:
            assert f["bytes"] == sizes[f["name"]], f
    text = run("info", ckpt_dir, check=0).stdout
    assert "Hugging Face Trainer checkpoint folder" in text
    for name in sizes:
        assert name in text


def test_info_sharded_lists_index_and_shards(sharded_dir):
    tf = run_json("info", sharded_dir)["trainer_folder"]
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert [f["name"] for f in tf["weights"]] == ["model.safetensors.index.json"] + shards


def test_model_folder_without_training_state_is_no_trainer_folder(ckpt_dir, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    for n in ("model.safetensors", "config.json"):
        shutil.copy(ckpt_dir / n, d / n)
    info = run_json("info", d)
    assert "trainer_folder" not in info


# --- strip -------------------------------------------------------------------------------------------------------------

def test_strip_to_pt(ckpt_dir, tmp_path, unchanged):
    out = tmp_path / "weights.pt"
    summary = run_json("strip", ckpt_dir, out)
    assert summary["output"] == str(out)
    ref = reference(ckpt_dir)
    for mmap in (False, True):
        sd = torch.load(out, weights_only=True, mmap=mmap)
        same_tensors(ref, sd)
    for n in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"):
        assert summary["records"][n]["after"].startswith("left out")
    no_temps(tmp_path)


def test_strip_to_safetensors(ckpt_dir, tmp_path, unchanged):
    out = tmp_path / "weights.safetensors"
    run("strip", ckpt_dir, out, check=0)
    same_tensors(reference(ckpt_dir), load_file(out))
    with safe_open(out, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    # The very file save_pretrained wrote.
    assert out.read_bytes() == (ckpt_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize("spelling", ["slash", "no-extension", "existing-folder"])
def test_strip_to_folder_loads_in_transformers(spelling, ckpt_dir, tmp_path, unchanged):
    if spelling == "slash":
        arg, out = str(tmp_path / "published") + "/", tmp_path / "published"
    elif spelling == "no-extension":
        arg, out = tmp_path / "published", tmp_path / "published"
    else:
        (tmp_path / "models").mkdir()
        arg, out = tmp_path / "models", tmp_path / "models" / "checkpoint-4"
    summary = run_json("strip", ckpt_dir, arg)
    assert summary["output"] == str(out)
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    for n in os.listdir(out):
        assert (out / n).read_bytes() == (ckpt_dir / n).read_bytes(), n
    assert summary["output_bytes"] == sum(os.path.getsize(out / n) for n in os.listdir(out))
    if spelling == "slash":
        original, facts0 = loaded(ckpt_dir, tmp_path)
        stripped, facts = loaded(out, tmp_path)
        same_tensors(original, stripped)
        assert facts["tied"] and facts0["tied"]
    no_temps(out.parent)


def test_strip_sharded_folder(sharded_dir, tmp_path):
    before = folder_hash(sharded_dir)
    out = tmp_path / "published"
    run("strip", sharded_dir, out, check=0)
    weights = sorted(n for n in os.listdir(sharded_dir) if n.startswith("model"))
    assert sorted(os.listdir(out)) == sorted(["config.json", "generation_config.json"] + weights)
    for n in os.listdir(out):
        assert (out / n).read_bytes() == (sharded_dir / n).read_bytes(), n
    original, _ = loaded(sharded_dir, tmp_path)
    stripped, facts = loaded(out, tmp_path)
    same_tensors(original, stripped)
    assert facts["tied"]
    # One .safetensors from the shards: the same tensors, save_file's metadata.
    one = tmp_path / "one.safetensors"
    run("strip", sharded_dir, one, check=0)
    same_tensors(reference(sharded_dir), load_file(one))
    with safe_open(one, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    same_tensors(reference(sharded_dir), torch.load(run_pt(sharded_dir, tmp_path), weights_only=True, mmap=True))
    assert folder_hash(sharded_dir) == before


def run_pt(folder, tmp_path):
    out = tmp_path / "sharded.pt"
    run("strip", folder, out, check=0)
    return out


def test_half_to_folder_and_pt(ckpt_dir, tmp_path, unchanged):
    ref = {k: v.half() for k, v in reference(ckpt_dir).items()}
    out = tmp_path / "half"
    summary = run_json("strip", ckpt_dir, out, "--half")
    assert summary["dtype"] == "float16"
    same_tensors(ref, load_file(out / "model.safetensors"))
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert (out / "config.json").read_bytes() == (ckpt_dir / "config.json").read_bytes()
    stripped, facts = loaded(out, tmp_path)
    assert facts["tied"]
    assert {k for k in stripped} >= set(ref)
    pt = tmp_path / "half.pt"
    run("strip", ckpt_dir, pt, "--half", check=0)
    same_tensors(ref, torch.load(pt, weights_only=True, mmap=True))
    no_temps(tmp_path)


def test_drop_and_rename_to_safetensors(ckpt_dir, tmp_path, unchanged):
    ref = reference(ckpt_dir)
    out = tmp_path / "x.safetensors"
    summary = run_json("strip", ckpt_dir, out, "--drop", "transformer.h.0.mlp.*", "--rename", "transformer.=body.")
    want = {k.replace("transformer.", "body.", 1): v for k, v in ref.items() if not k.startswith("transformer.h.0.mlp.")}
    same_tensors(want, load_file(out))
    with safe_open(out, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert len(summary["dropped"]) == len(ref) - len(want)
    no_temps(tmp_path)


def test_dry_run_writes_nothing(ckpt_dir, tmp_path, unchanged):
    for out in (tmp_path / "d.pt", tmp_path / "d.safetensors", tmp_path / "dfolder"):
        summary = run_json("strip", ckpt_dir, out, "--dry-run")
        assert summary["dry_run"] and summary["output_bytes"] is None
        assert not out.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("option", [["--use-ema"], ["--record", "model"]])
def test_unsupported_options_refused(option, ckpt_dir, tmp_path, unchanged):
    for out in (tmp_path / "o.pt", tmp_path / "o.safetensors", tmp_path / "ofolder"):
        p = run("strip", ckpt_dir, out, *option)
        assert_clean_failure(p, ckpt_dir)
        assert option[0] in p.stderr
    assert os.listdir(tmp_path) == []


def test_outputs_refused(ckpt_dir, tmp_path, unchanged):
    # Inside the input folder, the input folder itself, an existing output folder, formats strip does not write.
    for out in (ckpt_dir / "x.pt", ckpt_dir / "model.safetensors", ckpt_dir, str(ckpt_dir) + "/", ckpt_dir.parent):
        assert_clean_failure(run("strip", ckpt_dir, out), out if not str(out).endswith("/") else None)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "checkpoint-4").mkdir()
    assert_clean_failure(run("strip", ckpt_dir, existing), "existing")
    for out in (tmp_path / "o.json", tmp_path / "o.onnx"):
        assert_clean_failure(run("strip", ckpt_dir, out), out)
    assert os.listdir(tmp_path) == ["existing"]


def test_other_files_copied_subfolders_left_out(ckpt_dir, tmp_path):
    # A tokenizer file (Trainer._save writes the processing class beside the model) is copied; a folder that is
    # neither weights nor training state is left out and said so; DeepSpeed's global_step folder is training state.
    d = tmp_path / "checkpoint-4"
    shutil.copytree(ckpt_dir, d)
    (d / "tokenizer_config.json").write_text('{"model_max_length": 16}\n')
    (d / "notes").mkdir()
    (d / "notes" / "a.txt").write_text("x")
    (d / "global_step4").mkdir()
    (d / "global_step4" / "mp_rank_00_model_states.pt").write_bytes(b"0" * 10)
    before = folder_hash(d)
    tf = run_json("info", d)["trainer_folder"]
    assert {f["name"] for f in tf["other"]} == {"tokenizer_config.json", "notes/"}
    assert {"global_step4/": 10}.items() <= {f["name"]: f["bytes"] for f in tf["training_state"]}.items()
    out = tmp_path / "out"
    summary = run_json("strip", d, out)
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer_config.json"]
    assert summary["records"]["notes/"]["after"].startswith("left out")
    assert summary["records"]["global_step4/"]["after"].startswith("left out")
    assert folder_hash(d) == before


def test_killed_strip_leaves_no_folder_and_its_temp_is_removed(ckpt_dir, tmp_path, unchanged):
    # A temp folder a killed strip left (its process id no longer runs) is removed by the next strip of that output;
    # one of a running process (this one) is kept.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".published.ckpt-tmp-{int(dead.stdout)}-abc"
    live = tmp_path / f".published.ckpt-tmp-{os.getpid()}-abc"
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    run("strip", ckpt_dir, tmp_path / "published", check=0)
    assert sorted(os.listdir(tmp_path)) == sorted(["published", live.name])
