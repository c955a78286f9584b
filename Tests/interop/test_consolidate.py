"""`ckpt consolidate`, and `--max-shard-size` of consolidate, convert and strip, against the reference writers:
huggingface_hub's `save_torch_state_dict` (the split, file names, index) and safetensors' `save_file` (the shards'
bytes), torch's `.half()`, `torch.load(weights_only=True)` and `mmap=True`."""
import collections
import json
import os

import pytest
import torch
import torch.nn as nn
from huggingface_hub import save_torch_state_dict, split_torch_state_dict_into_shards
from huggingface_hub.serialization._base import parse_size_to_int
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import FIXTURES, assert_clean_failure, run, run_json

FLOATS = (torch.float32, torch.float64, torch.bfloat16)


def bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def record_state_dict(path, record):
    """What torch gives for the record consolidate wrote (the record its --json names): a module's state_dict(), a
    dict's tensors, the file itself."""
    obj = torch.load(path, weights_only=False, map_location="cpu")
    value = obj[record] if record else obj
    if isinstance(value, nn.Module):
        value = value.state_dict()
    return collections.OrderedDict((k, v) for k, v in value.items() if isinstance(v, torch.Tensor))


def listing(folder):
    return sorted(os.listdir(folder))


def safetensors_parts(data):
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n], object_pairs_hook=list)
    metadata = [v for k, v in header if k == "__metadata__"]
    return n, dict(metadata[0]) if metadata else None, [(k, v) for k, v in header if k != "__metadata__"], data[8 + n:]


def assert_same_safetensors(ours, ref, name=""):
    """save_file's bytes, except the order of __metadata__'s entries: safetensors serializes them from a Rust HashMap,
    in an order that changes from run to run when there are several (aliases beside "format"): compared as a dict."""
    if ours == ref:
        return
    a, b = safetensors_parts(ours), safetensors_parts(ref)
    assert a[1] is not None and len(a[1]) > 1, f"{name}: bytes differ"
    assert a == b, f"{name}: differs from save_file's"


def assert_same_folder(ours, ref):
    """The same files: the index byte for byte (json.dump's bytes) and every shard as save_file writes it."""
    assert listing(ours) == listing(ref)
    for name in listing(ref):
        if name.endswith(".safetensors"):
            assert_same_safetensors((ours / name).read_bytes(), (ref / name).read_bytes(), name)
        else:
            assert (ours / name).read_bytes() == (ref / name).read_bytes(), name


def hub_folder(tmp, sd, size, name="ref"):
    ref = tmp / name
    ref.mkdir()
    save_torch_state_dict(dict(sd), ref, max_shard_size=size)
    return ref


def halved(sd):
    """`.half()` of each floating tensor; tied tensors (one storage, one view) stay tied, as `model.half()` keeps them
    (ckpt converts storages, not names)."""
    memo = {}

    def half(v):
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride(), v.dtype)
        return memo.setdefault(key, v.half())

    return collections.OrderedDict((k, half(v) if v.dtype in FLOATS else v) for k, v in sd.items())


FIXTURE_RECORDS = ["resnet-sd.pt", "yolov5s-train.pt", "ultralytics-train.pt", "sd-legacy.pt",
                   "frameworks/lightning.pt", "frameworks/mmengine-ema.pt", "frameworks/torchvision-ref.pt",
                   "frameworks/detectron2.pt", "frameworks/fairseq.pt"]


@pytest.mark.parametrize("fixture", FIXTURE_RECORDS)
def test_consolidate_sharded_is_save_torch_state_dict(tmp, fixture):
    path = FIXTURES / fixture
    dry = run_json("consolidate", path, tmp / "dry", "--max-shard-size", "1KB", "--dry-run")
    assert dry["dry_run"] is True and not (tmp / "dry").exists()
    sd = record_state_dict(path, dry["record"])
    total = sum(v.untyped_storage().nbytes() for v in sd.values())
    for size in (str(total // 4), "7KB", str(total * 2)):
        out = tmp / f"out-{size}"
        r = run_json("consolidate", path, out, "--max-shard-size", size)
        ref = hub_folder(tmp, sd, int(size) if size.isdigit() else size, f"ref-{size}")
        assert_same_folder(out, ref)
        assert r["max_shard_size"] == (int(size) if size.isdigit() else parse_size_to_int(size))
        assert [s["file"] for s in r["shards"]] == sorted(n for n in listing(ref) if not n.endswith(".json"))
        split = split_torch_state_dict_into_shards(sd, max_shard_size=r["max_shard_size"])
        assert r["total_size"] == split.metadata["total_size"]


@pytest.mark.parametrize("fixture", ["resnet-sd.pt", "yolov5s-train.pt", "frameworks/lightning.pt",
                                     "frameworks/detectron2.pt"])
def test_consolidate_pt_and_safetensors(tmp, fixture):
    path = FIXTURES / fixture
    r = run_json("consolidate", path, tmp / "w.pt")
    sd = record_state_dict(path, r["record"])
    for loaded in (torch.load(tmp / "w.pt", weights_only=True), torch.load(tmp / "w.pt", weights_only=True, mmap=True)):
        assert list(loaded) == list(sd)
        assert all(same(loaded[k], sd[k]) for k in sd)
    run("consolidate", path, tmp / "w.safetensors", check=0)
    st = load_file(tmp / "w.safetensors")
    with safe_open(tmp / "w.safetensors", "pt") as f:
        aliases = {k: v for k, v in f.metadata().items() if k != "format"}
    assert set(st) | set(aliases) == set(sd)
    assert all(same(st[k], sd[k]) for k in st)
    # safetensors' own writer, given the same state dict, writes the same bytes (single shard: model.safetensors)
    ref = hub_folder(tmp, sd, 10**12)
    assert_same_safetensors((tmp / "w.safetensors").read_bytes(), (ref / "model.safetensors").read_bytes())


@pytest.mark.parametrize("fixture", ["resnet-sd.pt", "frameworks/lightning.pt", "frameworks/fairseq.pt"])
def test_half_is_torch_half(tmp, fixture):
    path = FIXTURES / fixture
    r = run_json("consolidate", path, tmp / "h.pt", "--half")
    sd = record_state_dict(path, r["record"])
    want = halved(sd)
    assert r["half_tensors"] == sum(v.dtype in FLOATS for v in sd.values())
    got = torch.load(tmp / "h.pt", weights_only=True)
    assert list(got) == list(want) and all(same(got[k], want[k]) for k in want)
    run("consolidate", path, tmp / "h.safetensors", "--half", check=0)
    ref = hub_folder(tmp, want, 10**12, "ref-one")
    assert_same_safetensors((tmp / "h.safetensors").read_bytes(), (ref / "model.safetensors").read_bytes())
    run("consolidate", path, tmp / "hs", "--half", "--max-shard-size", "9KB", check=0)
    assert_same_folder(tmp / "hs", hub_folder(tmp, want, "9KB"))


def edge_state_dict():
    """What the split must get right: tied weights (one storage, two names), views of one storage that do not
    overlap (the storage counted once, whole, and its tensors in one shard), a transposed view, a tensor larger than
    the limit in the middle, empty tensors, mixed dtypes, names JSON must escape."""
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(40, 16, generator=g)
    qkv = torch.randn(3 * 24, 8, generator=g)
    sd = collections.OrderedDict()
    sd["embed.weight"] = emb
    sd["a.weight"] = torch.randn(30, 10, generator=g)
    sd["big.weight"] = torch.randn(200, 30, generator=g)  # 24,000 bytes: alone in its shard
    sd["q.weight"], sd["k.weight"], sd["v.weight"] = qkv[:24], qkv[24:48], qkv[48:]
    sd["t.weight"] = torch.randn(12, 20, generator=g).t()
    sd["empty"] = torch.zeros(0)
    sd["b.bias"] = torch.randn(50, generator=g).to(torch.bfloat16)
    sd["steps"] = torch.tensor(7)
    sd["empty2"] = torch.zeros(0, 4, dtype=torch.int32)
    sd["名前.é"] = torch.randn(100, generator=g, dtype=torch.float64)
    sd["quote\"\\tab\t"] = torch.randn(3, generator=g)
    sd["head.weight"] = emb  # tied to embed.weight: stored once, the alias in the index's metadata
    return sd


@pytest.mark.parametrize("size", ["2KB", "4000", "5KB", "0.006MB", "10KB", "1GB", "0"])
def test_split_edges_are_the_reference(tmp, size):
    sd = edge_state_dict()
    src = tmp / "edge.pt"
    torch.save(sd, src)
    loaded = torch.load(src, weights_only=True)  # as ckpt reads it: the storages torch.save wrote
    # q, k, v view parts of one storage: huggingface_hub refuses them ("None is covering the entire storage"), ckpt
    # writes each compacted, as the state dict of their clones would be written
    for k in ("q.weight", "k.weight", "v.weight"):
        loaded[k] = loaded[k].clone()
    r = run_json("consolidate", src, tmp / "ours", "--max-shard-size", size)
    ref = hub_folder(tmp, loaded, int(size) if size.isdigit() else size)
    assert_same_folder(tmp / "ours", ref)
    if (ref / "model.safetensors.index.json").exists():
        index = json.loads((ref / "model.safetensors.index.json").read_text())
        assert r["removed_aliases"] == {k: v for k, v in index["metadata"].items() if k != "total_size"}
    # and what was written reads back as the state dict, tied weight included
    back = run_json("keys", tmp / "ours")
    assert sorted(e["name"] for e in back) == sorted(k for k in sd if k != "head.weight")


def test_size_parser_is_parse_size_to_int(tmp):
    sd = edge_state_dict()
    src = tmp / "edge.pt"
    torch.save(sd, src)
    for text in ["5GB", "500MB", "2KB", "2kb", " 3 MB ", "1.5KB", "0.0021MB", "1e1KB", "1TB", "4.9999KB", ".5KB"]:
        r = run_json("consolidate", src, tmp / "x", "--max-shard-size", text, "--dry-run")
        assert r["max_shard_size"] == parse_size_to_int(text), text
    for text in ["5GiB", "5B", "KB", "abcKB", "-1KB", "nanKB", "1_0KB", "5 G"]:
        p = run("consolidate", src, tmp / "x", f"--max-shard-size={text}")
        assert_clean_failure(p, tmp / "x")
        assert not (tmp / "x").exists()


def test_convert_max_shard_size(tmp):
    path = FIXTURES / "frameworks" / "torchvision-ref.pt"
    r = run_json("convert", path, tmp / "c", "--max-shard-size", "20KB", "--record", "model_ema")
    sd = record_state_dict(path, "model_ema")
    # convert keeps the record's names (model_ema's are module.-prefixed, with n_averaged), as convert to a file does
    assert_same_folder(tmp / "c", hub_folder(tmp, sd, "20KB"))
    assert r["output_format"] == "sharded-safetensors"


def test_strip_max_shard_size_writes_the_stripped_weights(tmp):
    path = FIXTURES / "yolov5s-train.pt"
    r = run_json("strip", path, tmp / "s", "--max-shard-size", "100KB", "--half")
    obj = torch.load(path, weights_only=False)
    want = halved(obj["model"].float().state_dict())
    assert_same_folder(tmp / "s", hub_folder(tmp, want, "100KB"))
    assert r["shards"] and r["output"] == str(tmp / "s")
    # a file output and --max-shard-size do not go together
    p = run("strip", path, tmp / "s.pt", "--max-shard-size", "100KB")
    assert_clean_failure(p, tmp / "s.pt")
    assert not (tmp / "s.pt").exists()


@pytest.mark.parametrize("half", [False, True])
def test_strip_trainer_folder_max_shard_size(tmp, half):
    """A Trainer folder stripped to a model folder: config files copied, the weights as shards."""
    src = FIXTURES / "frameworks" / "hf-trainer" / "checkpoint-3"
    args = ["--half"] if half else []
    r = run_json("strip", src, tmp / "model", "--max-shard-size", "3KB", *args)
    weights = load_file(src / "model.safetensors")
    ref = hub_folder(tmp, halved(weights) if half else weights, "3KB")
    ours = tmp / "model"
    for name in ("config.json", "generation_config.json"):
        assert (ours / name).read_bytes() == (src / name).read_bytes()
        (ours / name).unlink()
    assert_same_folder(ours, ref)
    assert len(r["shards"]) == len([n for n in listing(ref) if n.endswith(".safetensors")])
    p = run("strip", src, tmp / "model.pt", "--max-shard-size", "3KB")
    assert_clean_failure(p, tmp / "model.pt")
    assert not (tmp / "model.pt").exists()


def test_every_read_command_reads_the_folder(tmp):
    path = FIXTURES / "resnet-sd.pt"
    out = tmp / "folder"
    run("consolidate", path, out, "--max-shard-size", "30KB", check=0)
    sd = torch.load(path, weights_only=True)
    keys = run_json("keys", out)
    assert sorted(e["name"] for e in keys) == sorted(sd)
    assert {e["name"]: e["shape"] for e in keys} == {k: list(v.shape) for k, v in sd.items()}
    assert run("info", out).returncode == 0
    assert run_json("info", out)["format"].startswith("sharded")
    assert run("scan", out).returncode == 0
    assert run("layers", out).returncode == 0
    assert run("diff", path, out, "--values").returncode == 0
    run("convert", out, tmp / "back.safetensors", check=0)
    back = load_file(tmp / "back.safetensors")
    assert set(back) == set(sd) and all(same(back[k], sd[k]) for k in sd)
    run("strip", out, tmp / "stripped.pt", check=0)
    stripped = torch.load(tmp / "stripped.pt", weights_only=True)
    assert set(stripped) == set(sd) and all(same(stripped[k], sd[k]) for k in sd)
    # and a folder ckpt wrote consolidates again, to the same bytes
    run("consolidate", out, tmp / "again", "--max-shard-size", "30KB", check=0)
    merged = collections.OrderedDict()
    for name in sorted(n for n in listing(out) if n.endswith(".safetensors")):
        merged.update(load_file(out / name))
    assert_same_folder(tmp / "again", hub_folder(tmp, merged, "30KB"))


def test_failures_write_nothing(tmp):
    path = FIXTURES / "resnet-sd.pt"
    full = tmp / "full"
    full.mkdir()
    (full / "x").write_text("keep")
    for args, at in [((path, full, "--max-shard-size", "10KB"), full),
                     ((path, tmp / "o.safetensors", "--max-shard-size", "10KB"), tmp / "o.safetensors"),
                     ((path, tmp / "o", "--max-shard-size", "10GiB"), tmp / "o"),
                     ((tmp / "missing.pt", tmp / "o", "--max-shard-size", "10KB"), tmp / "missing.pt"),
                     ((FIXTURES / "yolov5s-train.pt", tmp / "o.pt", "--record", "optimizer"), FIXTURES / "yolov5s-train.pt")]:
        before = sorted(p.name for p in tmp.rglob("*"))
        p = run("consolidate", *args)
        assert_clean_failure(p, at)
        assert sorted(p.name for p in tmp.rglob("*")) == before
    assert (full / "x").read_text() == "keep"
    # an empty folder is the output's place; a damaged input leaves no folder and no temporary folder behind
    empty = tmp / "empty"
    empty.mkdir()
    run("consolidate", path, empty, "--max-shard-size", "50KB", check=0)
    assert (empty / "model.safetensors.index.json").exists()
    data = path.read_bytes()
    bad = tmp / "bad.pt"
    bad.write_bytes(data[: len(data) - 4000])
    before = sorted(p.name for p in tmp.iterdir())
    p = run("consolidate", bad, tmp / "o2", "--max-shard-size", "50KB")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp.iterdir()) == before


def test_consolidate_leaves_optimizer_state_out(tmp):
    """A file whose weights record is the whole file: its optimizer records are not weights."""
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    obj = {"weights": model.state_dict(), "optim": opt.state_dict()}
    src = tmp / "x.pt"
    torch.save(obj, src)
    p = run("consolidate", src, tmp / "w.pt")
    assert p.returncode == 0, p.stderr
    assert "optimizer state left out" in p.stderr
    got = torch.load(tmp / "w.pt", weights_only=True)
    assert sorted(got) == sorted(f"weights.{k}" for k in model.state_dict())
    assert all(same(got[f"weights.{k}"], v) for k, v in model.state_dict().items())


def test_trainer_folder_shards_are_save_pretrained_shards(tmp):
    """transformers' own save_pretrained(max_shard_size=...) of the same model: the same shard files and weight_map
    (its index adds total_parameters and sorts the keys), and from_pretrained loads ckpt's folder to the same model."""
    pytest.importorskip("transformers")
    from test_trainer_folder import SHARD, loaded, python, same_tensors

    src = FIXTURES / "frameworks" / "hf-trainer" / "checkpoint-3"
    ref = tmp / "ref"
    python(SHARD.replace('"2KB"', '"3KB"'), src, ref)
    ours = tmp / "ours"
    run("strip", src, ours, "--max-shard-size", "3KB", check=0)
    shards = sorted(n for n in listing(ref) if n.endswith(".safetensors"))
    assert len(shards) > 1 and shards == sorted(n for n in listing(ours) if n.endswith(".safetensors"))
    for name in shards:
        assert_same_safetensors((ours / name).read_bytes(), (ref / name).read_bytes(), name)
    a = json.loads((ours / "model.safetensors.index.json").read_text())
    b = json.loads((ref / "model.safetensors.index.json").read_text())
    assert a["weight_map"] == b["weight_map"]
    assert a["metadata"]["total_size"] == b["metadata"]["total_size"] and "total_parameters" in b["metadata"]
    got, facts = loaded(ours, tmp)
    want, _ = loaded(src, tmp)
    same_tensors(got, want)
    assert facts["tied"]


def test_a_tensor_named_like_the_safetensors_header_is_refused(tmp_path):
    """safetensors' own save_file writes a tensor named `__metadata__` into a file that no reader opens (the header key
    twice); ckpt refuses it with one line and writes nothing, to every safetensors output."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "in.pt"
    torch.save({"__metadata__": torch.zeros(2), "w": torch.ones(3)}, src)
    ref = tmp_path / "ref.safetensors"
    save_file({"__metadata__": torch.zeros(2), "w": torch.ones(3)}, ref)
    with pytest.raises(Exception):
        load_file(ref)
    for cmd, out, extra in (("convert", "o.safetensors", []), ("consolidate", "c.safetensors", []),
                            ("consolidate", "shards", ["--max-shard-size", "8"])):
        p = run(cmd, src, tmp_path / out, *extra)
        assert p.returncode == 2 and "__metadata__" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (tmp_path / out).exists()
    # To a torch file the name is an ordinary key.
    assert run("consolidate", src, tmp_path / "ok.pt").returncode == 0
