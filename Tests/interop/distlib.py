"""Oracles and damaged copies for the distributed checkpoints of fixtures/distributed/ (issue 15).

The oracles are the frameworks' own consolidators, never numbers typed here:
- DCP folders: `torch.distributed.checkpoint.format_utils.dcp_to_torch_save` (torch 2.13), run into a temp file and
  loaded back (the whole nested dict it writes).
- `HuggingFaceStorageWriter(save_distributed=True)` folders (per-rank safetensors, no `.metadata`): torch's own reader,
  `HuggingFaceStorageReader`, through the same call `dcp_to_torch_save` makes (`_load_state_dict` with
  `_EmptyStateDictLoadPlanner`, no_dist). torch 2.13 also offers `_consolidate_hf_safetensors.
  consolidate_safetensors_files`, which writes one safetensors file from them: `hf_consolidated` runs it, and a test
  checks both agree. The files are listed in name order: the reader takes them in `Path.iterdir` order, which the
  file system decides, and the order of a name found in one file only depends on it.
- `SerializationFormat.SAFETENSORS` DCP folders: torch 2.13's FileSystemReader cannot read them back (it torch.loads
  the safetensors bytes). Their oracle is `dcp_to_torch_save` of the folder written from the very same state dict in
  the same run with the default writer (`SIBLING`); `dcp_safetensors_reading` reads them with the safetensors library
  and `.metadata` so a test can check that premise.
- DeepSpeed ZeRO folders: `deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`, run by the DeepSpeed
  venv's python (`.venv-ds`, made by scripts/setup; `CKPT_DS_PYTHON` names another) in a subprocess that torch.saves
  the dict; loaded back here. torch.save keeps the tied tensors DeepSpeed returns as one (`head.weight` is
  `emb.weight`).

The damaged copies are made in a temp folder from a copy of a fixture: a missing file, a truncated file, and edits of
`.metadata` made with pickle (it is a plain pickle of torch's dataclasses: unpickled here from our own fixtures, the
test process has torch) that leave a chunk whose size disagrees with the metadata, a hole, or an overlap.
"""
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "fixtures" / "distributed"

DCP_FOLDERS = ["dcp-fsdp2-ws2", "dcp-fsdp2-bf16-ws4", "dcp-dtensor-ws2", "dcp-safetensors-ws2", "dcp-threads-ws2",
               "dcp-multifile-ws2"]
HF_FOLDERS = ["hf-distributed-ws2"]
ZERO_FOLDERS = ["zero1", "zero2", "zero3", "zero3-fp32-ws4"]
# A DCP folder torch cannot read back -> the folder written from the same state dict in the same run (and the records
# it holds: the safetensors variant holds the model and train_state only).
SIBLING = {"dcp-safetensors-ws2": ("dcp-fsdp2-ws2", ["model", "train_state"])}

_cache = {}


def _load(path):
    """torch.load of an oracle's output, each tensor given a storage of its own, except that names which are the
    same tensor (DeepSpeed's tied `head.weight` is `emb.weight`) stay one tensor. (zero_to_fp32's stage 1/2 tensors
    are views into one flat fp32 vector per group: a storage none of them covers, which huggingface_hub's safetensors
    writer refuses; what they share is an artefact of how it computes them, not of the model.)"""
    return _own_storages(torch.load(path, weights_only=True, map_location="cpu"), {})


def _own_storages(value, seen):
    if torch.is_tensor(value):
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()),
               value.dtype)
        if key not in seen:
            seen[key] = value.clone(memory_format=torch.contiguous_format)
        return seen[key]
    if isinstance(value, dict):
        return type(value)((k, _own_storages(v, seen)) for k, v in value.items())
    if isinstance(value, list):
        return [_own_storages(v, seen) for v in value]
    return value


def dcp_oracle(folder):
    """The dict `dcp_to_torch_save(folder, out)` writes, loaded back (nested as the state dict that was saved)."""
    folder = Path(folder)
    if folder.name in SIBLING and folder.parent == DIST:
        sibling, records = SIBLING[folder.name]
        whole = dcp_oracle(DIST / sibling)
        return {r: whole[r] for r in records}
    key = ("dcp", str(folder))
    if key not in _cache:
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as d:
            dcp_to_torch_save(folder, Path(d) / "out.pt")
            _cache[key] = _load(Path(d) / "out.pt")
    return _cache[key]


def _name_ordered_reader(folder):
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    reader = HuggingFaceStorageReader(str(folder))
    listed = reader.fs.ls
    reader.fs.ls = lambda path: sorted(listed(path))
    return reader


def hf_oracle(folder):
    """What torch's HuggingFaceStorageReader consolidates from a save_distributed=True folder: {fqn: tensor}."""
    key = ("hf", str(folder))
    if key not in _cache:
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        sd = {}
        _load_state_dict(sd, storage_reader=_name_ordered_reader(folder), planner=_EmptyStateDictLoadPlanner(),
                         no_dist=True)
        with tempfile.TemporaryDirectory() as d:  # through torch.save and back, as the other oracles
            torch.save(sd, Path(d) / "out.pt")
            _cache[key] = _load(Path(d) / "out.pt")
    return _cache[key]


def hf_consolidated(folder):
    """torch's other consolidation of the same folder: consolidate_safetensors_files into one safetensors file."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files

    names = list(hf_oracle(folder))
    with tempfile.TemporaryDirectory() as d:
        consolidate_safetensors_files(str(folder), d, {n: 1 for n in names})
        files = [f for f in os.listdir(d) if f.endswith(".safetensors")]
        assert len(files) == 1, files
        return load_file(Path(d) / files[0])


def ds_python():
    exe = os.environ.get("CKPT_DS_PYTHON") or str(ROOT / ".venv-ds" / "bin" / "python")
    assert Path(exe).exists(), f"{exe} is missing: scripts/setup makes .venv-ds (DeepSpeed, the ZeRO oracle)"
    return exe


_ZERO_SCRIPT = """
import sys, torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
folder, tag, out = sys.argv[1], sys.argv[2] or None, sys.argv[3]
torch.save(get_fp32_state_dict_from_zero_checkpoint(folder, tag=tag), out)
"""


def zero_oracle(folder):
    """The dict `get_fp32_state_dict_from_zero_checkpoint` returns: for the folder holding `latest` (tag from it), or
    for a tag folder itself (its parent with tag=its name)."""
    folder = Path(folder)
    key = ("zero", str(folder))
    if key not in _cache:
        base, tag = (folder, "") if (folder / "latest").exists() else (folder.parent, folder.name)
        env = dict(os.environ, DS_ACCELERATOR="cpu")
        env["PATH"] = str(Path(ds_python()).parent) + os.pathsep + env.get("PATH", "")
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "zero.pt"
            p = subprocess.run([ds_python(), "-c", _ZERO_SCRIPT, str(base), tag, str(out)], capture_output=True,
                               text=True, env=env, timeout=600)
            assert p.returncode == 0, p.stderr[-3000:]
            _cache[key] = _load(out)
    return _cache[key]


def oracle(folder):
    """The consolidated dict of any fixture folder (or a tag folder of a ZeRO one), by the right oracle."""
    folder = Path(folder)
    top = folder.parent.name if folder.parent.name in ZERO_FOLDERS else folder.name
    if top in ZERO_FOLDERS:
        return zero_oracle(folder)
    if top in HF_FOLDERS:
        return hf_oracle(folder)
    return dcp_oracle(folder)


def weights(folder):
    """The tensors `ckpt consolidate` writes by default and `ckpt keys` lists: a DCP checkpoint's `model` record,
    the whole dict for the others (a flat {name: tensor})."""
    sd = oracle(folder)
    return sd["model"] if "model" in sd else sd


def flat_tensors(value, prefix=""):
    """{dotted name: tensor} of the tensors in nested dicts and lists, depth first in insertion order: how `ckpt keys`
    names tensors inside a record (`state.0.weight.exp_avg`, `history.1`)."""
    out = {}
    if torch.is_tensor(value):
        out[prefix] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            out.update(flat_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out.update(flat_tensors(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def listing(tensors):
    """`ckpt keys --json` of {name: tensor}."""
    return [{"name": k, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()]


def bits(t):
    """The tensor's bytes (NaN payloads and -0 count)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_bit_identical(got, want, ordered=True):
    """Same names (in the same order when `ordered`), and each tensor the same dtype, shape and bytes."""
    if ordered:
        assert list(got) == list(want)
    else:
        assert sorted(got) == sorted(want)
    for k, b in want.items():
        a = got[k]
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), (k, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(bits(a), bits(b)), f"{k}: bytes differ"


def half(tensors):
    """torch's `.half()` of every floating tensor (float8 and integers untouched), as `--half` promises."""
    fp8 = {d for d in vars(torch).values() if isinstance(d, torch.dtype) and "float8" in str(d)}
    return {k: v.half() if v.is_floating_point() and v.dtype not in fp8 else v for k, v in tensors.items()}


# ---- the safetensors DCP variant, read with the safetensors library (to check its SIBLING premise) ----

def _metadata(folder):
    with open(Path(folder) / ".metadata", "rb") as f:
        return pickle.load(f)


def dcp_safetensors_reading(folder):
    """A SerializationFormat.SAFETENSORS DCP folder read with the safetensors library: each rank file is its bytes
    items (torch.save zips at the offsets `.metadata` gives) followed by one safetensors blob (torch 2.13
    filesystem.py `_write_files_from_queue`), whose `DCP_SHARDING_INFO` gives each chunk's offsets; the nesting is
    `planner_data`. Returns the nested dict as dcp_to_torch_save would."""
    import io

    from safetensors.torch import load as st_load

    md = _metadata(folder)
    blobs = {}
    for index, info in md.storage_data.items():
        if index.offset is None:  # a bytes item
            end = info.offset + info.length
            blobs[info.relative_path] = max(blobs.get(info.relative_path, 0), end)
        else:
            blobs.setdefault(info.relative_path, 0)
    chunks = {}
    for name, start in blobs.items():
        data = (Path(folder) / name).read_bytes()
        n = struct.unpack("<Q", data[start:start + 8])[0]
        sharding = json.loads(json.loads(data[start + 8:start + 8 + n])["__metadata__"]["DCP_SHARDING_INFO"])
        for fqn, t in st_load(data[start:]).items():
            chunks[(fqn, tuple(sharding[fqn]["saved_offsets"]))] = t
    out = {}
    for fqn, meta in md.state_dict_metadata.items():
        if hasattr(meta, "chunks"):
            value = torch.empty(meta.size, dtype=meta.properties.dtype)
            for c in meta.chunks:
                box = tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes))
                value[box] = chunks[(fqn, tuple(c.offsets))]
        else:
            info = md.storage_data[next(i for i in md.storage_data if i.fqn == fqn)]
            with open(Path(folder) / info.relative_path, "rb") as f:
                f.seek(info.offset)
                value = torch.load(io.BytesIO(f.read(info.length)), weights_only=True)
        node = out
        path = md.planner_data[fqn]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


# ---- damaged copies ----

def _copy(src, tmp, label):
    dst = Path(tmp) / f"{Path(src).name}-{label}"
    shutil.copytree(src, dst)
    return dst


def _split_tensor(md, prefix="model."):
    """The first tensor of the record (fqn under `prefix`) cut into two or more non-empty chunks, and the dimension
    along which its first two chunks are cut."""
    for fqn, meta in md.state_dict_metadata.items():
        if not fqn.startswith(prefix) or not hasattr(meta, "chunks"):
            continue
        chunks = [c for c in meta.chunks if all(s > 0 for s in c.sizes)]
        if len(chunks) >= 2:
            dim = next(d for d in range(len(meta.size)) if chunks[0].offsets[d] != chunks[1].offsets[d])
            return fqn, meta, dim
    raise AssertionError(f"no tensor under {prefix!r} has two chunks")


def _index_of(md, fqn, offsets):
    return next(i for i in md.storage_data if i.fqn == fqn and i.offset is not None and tuple(i.offset) == tuple(offsets))


def _save_metadata(folder, md):
    with open(Path(folder) / ".metadata", "wb") as f:
        pickle.dump(md, f, protocol=4)


def damaged_dcp(src, tmp, damage):
    """A copy of the DCP folder `src` with one defect. Returns (folder, what the error line must name): the file name
    for a file defect, the tensor's name within its record (`layers.0.q.weight`) for a metadata defect.

    - missing-file: the .distcp holding the record's first split tensor's second chunk is deleted;
    - truncated-file: that file loses its last half;
    - size-mismatch: the first two chunks' boxes move by one along their cut (the first one row shorter, the second
      one longer, still covering the tensor exactly): each stored chunk now disagrees with its box;
    - hole: the second chunk is dropped from the metadata (and its storage entry);
    - overlap: a third chunk, the second one's data placed one row earlier, overlaps the first."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    dst = _copy(src, tmp, damage)
    md = _metadata(dst)
    fqn, meta, dim = _split_tensor(md)
    key = fqn.split(".", 1)[1]
    c0, c1 = [c for c in meta.chunks if all(s > 0 for s in c.sizes)][:2]
    i1 = _index_of(md, fqn, c1.offsets)
    file = md.storage_data[i1].relative_path
    if damage == "missing-file":
        (dst / file).unlink()
        return dst, file
    if damage == "truncated-file":
        path = dst / file
        os.truncate(path, path.stat().st_size // 2)
        return dst, file
    if damage == "size-mismatch":
        s0 = list(c0.sizes); s0[dim] -= 1
        o1 = list(c1.offsets); o1[dim] -= 1
        s1 = list(c1.sizes); s1[dim] += 1
        meta.chunks[meta.chunks.index(c0)] = ChunkStorageMetadata(offsets=c0.offsets, sizes=torch.Size(s0))
        meta.chunks[meta.chunks.index(c1)] = ChunkStorageMetadata(offsets=torch.Size(o1), sizes=torch.Size(s1))
        info = md.storage_data.pop(i1)
        md.storage_data[MetadataIndex(fqn=fqn, offset=torch.Size(o1), index=i1.index)] = info
    elif damage == "hole":
        meta.chunks.remove(c1)
        del md.storage_data[i1]
    elif damage == "overlap":
        o = list(c1.offsets); o[dim] -= 1
        meta.chunks.append(ChunkStorageMetadata(offsets=torch.Size(o), sizes=c1.sizes))
        md.storage_data[MetadataIndex(fqn=fqn, offset=torch.Size(o), index=len(meta.chunks) - 1)] = md.storage_data[i1]
    else:
        raise ValueError(damage)
    _save_metadata(dst, md)
    return dst, key


DCP_DAMAGES = ["missing-file", "truncated-file", "size-mismatch", "hole", "overlap"]


def damaged_hf(src, tmp, damage):
    """A copy of a save_distributed=True folder with one defect, and what the error line must name.

    - truncated-file: the last rank's file loses its last half;
    - hole: in the last rank's file, DCP_SHARDING_INFO's offset of a tensor cut along dim 0 moves one row further
      (same number of digits, so the header keeps its length): the global shape grows by a row no chunk covers."""
    dst = _copy(src, tmp, damage)
    files = sorted(p for p in dst.iterdir() if p.suffix == ".safetensors")
    last = files[-1]
    if damage == "truncated-file":
        os.truncate(last, last.stat().st_size // 2)
        return dst, last.name
    if damage == "hole":
        data = bytearray(last.read_bytes())
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        sharding = json.loads(header["__metadata__"]["DCP_SHARDING_INFO"])
        fqn, offsets = next((k, v["saved_offsets"]) for k, v in sharding.items()
                            if v["saved_offsets"] and 0 < v["saved_offsets"][0] < 9)
        old = json.dumps({fqn: {"saved_offsets": offsets}})[1:-1]
        new = json.dumps({fqn: {"saved_offsets": [offsets[0] + 1, *offsets[1:]]}})[1:-1]
        # DCP_SHARDING_INFO is a JSON string inside the header's JSON: its quotes are escaped there.
        old_b, new_b = json.dumps(old)[1:-1].encode(), json.dumps(new)[1:-1].encode()
        assert data.count(old_b) == 1 and len(old_b) == len(new_b), (old_b, new_b)
        start = data.index(old_b)
        data[start:start + len(old_b)] = new_b
        last.write_bytes(bytes(data))
        return dst, fqn
    raise ValueError(damage)


HF_DAMAGES = ["truncated-file", "hole"]


def damaged_zero(src, tmp, damage):
    """A copy of a ZeRO folder (the one holding `latest`) with one defect, and the file the error line must name.

    - missing-optim: the last rank's optimizer-states file is deleted;
    - truncated-model: the (first) model-states file loses its last half."""
    dst = _copy(src, tmp, damage)
    tag = (dst / "latest").read_text().strip()
    files = sorted((dst / tag).iterdir())
    if damage == "missing-optim":
        victim = [p for p in files if p.name.endswith("_optim_states.pt")][-1]
        victim.unlink()
    elif damage == "truncated-model":
        victim = [p for p in files if p.name.endswith("_model_states.pt")][0]
        os.truncate(victim, victim.stat().st_size // 2)
    else:
        raise ValueError(damage)
    return dst, victim.name


ZERO_DAMAGES = ["missing-optim", "truncated-model"]
