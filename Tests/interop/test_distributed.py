"""Distributed checkpoints (issue 15): `keys`, `info` and `consolidate` of the folders in fixtures/distributed/ (DCP
written by torch 2.13 on gloo, Hugging Face save_distributed safetensors, DeepSpeed ZeRO 1/2/3 written by DeepSpeed
0.19.8), against the frameworks' own consolidators (Tests/interop/distlib.py: dcp_to_torch_save, torch's
HuggingFaceStorageReader, zero_to_fp32's get_fp32_state_dict_from_zero_checkpoint), and damaged copies refused."""
import json
import os

import pytest
import torch
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

import distlib
from conftest import assert_clean_failure, run, run_json
from distlib import DIST, bits, flat_tensors, listing, oracle, weights

# Every folder ckpt reads: the DCP and HF ones, a ZeRO checkpoint by the folder holding `latest` and by its tag folder.
FOLDERS = (distlib.DCP_FOLDERS + distlib.HF_FOLDERS + distlib.ZERO_FOLDERS
           + [f"{z}/global_step2" for z in distlib.ZERO_FOLDERS])


def nbytes(t):
    return t.numel() * t.element_size()


@pytest.mark.parametrize("folder", FOLDERS)
def test_keys_lists_what_the_oracle_consolidates(folder):
    """The default record (a DCP checkpoint's `model`; the whole dict of the others): names, dtypes and global shapes,
    in the oracle's order."""
    assert run_json("keys", DIST / folder) == listing(flat_tensors(weights(DIST / folder)))


@pytest.mark.parametrize("folder,record", [("dcp-fsdp2-ws2", "optim"), ("dcp-fsdp2-bf16-ws4", "optim"),
                                           ("dcp-fsdp2-ws2", "model"), ("dcp-dtensor-ws2", "aux")])
def test_keys_of_a_record(folder, record):
    """--record: the record's tensors nested as dcp_to_torch_save nests them (planner_data), named as keys names a
    nested dict's tensors (`state.layers.0.q.weight.exp_avg`, `history.1`)."""
    want = flat_tensors(oracle(DIST / folder)[record])
    assert run_json("keys", DIST / folder, "--record", record) == listing(want)


@pytest.mark.parametrize("folder", FOLDERS)
def test_info_records_and_sizes(folder):
    """info: the format says what the folder is; the records are the oracle's top-level entries in order (a flat state
    dict is one record), with the oracle's tensor counts, elements, bytes and dtypes."""
    info = run_json("info", DIST / folder)
    fmt = info["format"].lower()
    top = folder.split("/")[0]
    if top in distlib.ZERO_FOLDERS:
        assert "zero" in fmt, info["format"]
    elif top in distlib.HF_FOLDERS:
        assert "safetensors" in fmt, info["format"]
    else:
        assert "dcp" in fmt or "distributed checkpoint" in fmt, info["format"]
    sd = oracle(DIST / folder)
    nested = any(not torch.is_tensor(v) for v in sd.values())
    records = {r["name"]: r for r in info["records"]}
    if nested:
        assert [r["name"] for r in info["records"]] == list(sd)
        groups = {name: flat_tensors(value) for name, value in sd.items()}
    else:
        assert list(records) == [""], list(records)
        groups = {"": sd}
    for name, tensors in groups.items():
        if not tensors:
            assert records[name].get("tensors", 0) == 0, name
            continue
        r = records[name]
        assert r["tensors"] == len(tensors), name
        assert r["elements"] == sum(t.numel() for t in tensors.values()), name
        assert r["bytes"] == sum(nbytes(t) for t in tensors.values()), name
        assert set(r["dtypes"]) == {str(t.dtype).replace("torch.", "") for t in tensors.values()}, name


@pytest.mark.parametrize("folder", FOLDERS)
def test_consolidate_to_pt(tmp_path, folder):
    """Bit-identical to the oracle's weights, in its order; loads with weights_only=True, and with mmap=True."""
    out = tmp_path / "out.pt"
    run("consolidate", DIST / folder, out, check=0)
    want = weights(DIST / folder)
    distlib.assert_bit_identical(torch.load(out, weights_only=True), want)
    distlib.assert_bit_identical(torch.load(out, weights_only=True, mmap=True), want)


def with_aliases(tensors, meta):
    """A safetensors file's tensors plus the shared tensors stored once (`removed: kept` in its metadata)."""
    out = dict(tensors)
    for removed, kept in (meta or {}).items():
        if removed not in ("format", "total_size") and kept in tensors:
            out[removed] = tensors[kept]
    return out


@pytest.mark.parametrize("folder", FOLDERS)
def test_consolidate_to_safetensors(tmp_path, folder):
    """Every tensor bit-identical, read with safe_open (a tied tensor may be stored once, its alias in
    `__metadata__` as the README's convert rule says)."""
    out = tmp_path / "out.safetensors"
    run("consolidate", DIST / folder, out, check=0)
    with safe_open(out, framework="pt") as f:
        meta = f.metadata()
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert meta.get("format") == "pt"
    distlib.assert_bit_identical(with_aliases(got, meta), weights(DIST / folder), ordered=False)


@pytest.mark.parametrize("size", ["300", "2KB"])
@pytest.mark.parametrize("folder", ["dcp-fsdp2-ws2", "dcp-fsdp2-bf16-ws4", "dcp-dtensor-ws2", "hf-distributed-ws2",
                                    "zero2", "zero3/global_step2"])
def test_consolidate_sharded(tmp_path, folder, size):
    """--max-shard-size: the folder huggingface_hub's save_torch_state_dict writes for the oracle's weights (the same
    files: `model-0000K-of-0000N.safetensors` + `model.safetensors.index.json`, or `model.safetensors` alone when it
    all fits; the same index), every tensor bit-identical when loaded through the index's weight_map."""
    want = weights(DIST / folder)
    out, ref = tmp_path / "out", tmp_path / "ref"
    run("consolidate", DIST / folder, out, "--max-shard-size", size, check=0)
    ref.mkdir()
    save_torch_state_dict(dict(want), ref, max_shard_size=int(size) if size.isdigit() else size)
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))
    index = out / "model.safetensors.index.json"
    if (ref / "model.safetensors.index.json").exists():
        assert len(os.listdir(ref)) > 2  # the small size does shard
        got_index = json.loads(index.read_text())
        assert got_index == json.loads((ref / "model.safetensors.index.json").read_text())
        shards = {f: load_file(out / f) for f in set(got_index["weight_map"].values())}
        got = {name: shards[f][name] for name, f in got_index["weight_map"].items()}
        got = with_aliases(got, got_index["metadata"])
    else:
        with safe_open(out / "model.safetensors", framework="pt") as f:
            got = with_aliases({k: f.get_tensor(k) for k in f.keys()}, f.metadata())
    for f in os.listdir(ref):
        if f.endswith(".safetensors"):
            distlib.assert_bit_identical(load_file(out / f), load_file(ref / f), ordered=False)
    distlib.assert_bit_identical(got, want, ordered=False)


@pytest.mark.parametrize("folder", ["dcp-fsdp2-ws2", "dcp-fsdp2-bf16-ws4", "dcp-dtensor-ws2", "hf-distributed-ws2",
                                    "zero1", "zero3", "zero3-fp32-ws4"])
def test_consolidate_half(tmp_path, folder):
    """--half: torch's .half() of the oracle's floating tensors (bf16 and fp32 alike), integers untouched."""
    out = tmp_path / "out.pt"
    run("consolidate", DIST / folder, out, "--half", check=0)
    distlib.assert_bit_identical(torch.load(out, weights_only=True), distlib.half(weights(DIST / folder)))


DAMAGED = ([(f, d) for f in distlib.DCP_FOLDERS for d in distlib.DCP_DAMAGES]
           + [(f, d) for f in distlib.HF_FOLDERS for d in distlib.HF_DAMAGES]
           + [(f, d) for f in distlib.ZERO_FOLDERS for d in distlib.ZERO_DAMAGES])


def damaged(src, tmp, damage):
    name = src.name
    if name in distlib.ZERO_FOLDERS:
        return distlib.damaged_zero(src, tmp, damage)
    if name in distlib.HF_FOLDERS:
        return distlib.damaged_hf(src, tmp, damage)
    return distlib.damaged_dcp(src, tmp, damage)


@pytest.mark.parametrize("output", ["out.pt", "out.safetensors", "shards"])
@pytest.mark.parametrize("folder,damage", DAMAGED)
def test_damaged_folder_is_refused(tmp_path, folder, damage, output):
    """A missing or truncated file, a chunk whose size disagrees with .metadata, a hole, an overlap (torch's own
    dcp_to_torch_save silently returns uninitialised memory for the hole and lets the overlap through): exit 2, one
    line `ckpt: ...` naming the file or the tensor, and nothing written (the output folder stays empty)."""
    src, name = damaged(DIST / folder, tmp_path, damage)
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    extra = ["--max-shard-size", "300"] if output == "shards" else []
    p = run("consolidate", src, outdir / output, *extra)
    assert_clean_failure(p, name)
    assert os.listdir(outdir) == []


# ---- the fixtures and oracles themselves: what the tests above rely on ----

def test_safetensors_variant_holds_its_siblings_tensors():
    """dcp-safetensors-ws2's oracle is dcp-fsdp2-ws2's (torch 2.13 cannot read it back): read with the safetensors
    library and .metadata, it holds exactly those tensors and train_state."""
    got = distlib.dcp_safetensors_reading(DIST / "dcp-safetensors-ws2")
    want = oracle(DIST / "dcp-safetensors-ws2")
    assert got["train_state"] == want["train_state"]
    distlib.assert_bit_identical(flat_tensors(got), flat_tensors(want))


def test_torch_hf_readers_agree():
    """torch's two consolidations of a save_distributed folder give the same tensors."""
    folder = DIST / "hf-distributed-ws2"
    distlib.assert_bit_identical(distlib.hf_consolidated(folder), oracle(folder), ordered=False)


def test_fixtures_have_the_layouts_the_tests_need():
    """Uneven dim-0 chunks (FSDP2), column boxes (Shard(1)), an empty chunk (13 rows over 4 ranks), a chunk stored
    non-contiguous (the transposed view), several files per rank, one file per item, and ZeRO's tied head."""
    import io
    import pickle

    def metadata(name):
        with open(DIST / name / ".metadata", "rb") as f:
            return pickle.load(f)

    def chunks(md):
        return [(fqn, c) for fqn, m in md.state_dict_metadata.items() if hasattr(m, "chunks") for c in m.chunks]

    fsdp = metadata("dcp-fsdp2-ws2")
    sizes = [c.sizes[0] for fqn, c in chunks(fsdp) if fqn == "model.tok_embeddings.weight"]
    assert sizes == [7, 6]
    dt = metadata("dcp-dtensor-ws2")
    assert any(len(c.offsets) == 2 and c.offsets[1] > 0 for _, c in chunks(dt))
    assert any(0 in c.sizes for _, c in chunks(metadata("dcp-fsdp2-bf16-ws4")))
    index = next(i for i in dt.storage_data if i.fqn == "model.transposed")
    info = dt.storage_data[index]
    with open(DIST / "dcp-dtensor-ws2" / info.relative_path, "rb") as f:
        f.seek(info.offset)
        stored = torch.load(io.BytesIO(f.read(info.length)), weights_only=True)
    assert not stored.is_contiguous()
    files = os.listdir(DIST / "dcp-threads-ws2")
    assert {"__0_0.distcp", "__0_1.distcp", "__1_0.distcp", "__1_1.distcp"} <= set(files)
    multi = metadata("dcp-multifile-ws2")
    assert len({i.relative_path for i in multi.storage_data.values()}) == len(multi.storage_data)
    assert not (DIST / "hf-distributed-ws2" / ".metadata").exists()
    for z in distlib.ZERO_FOLDERS:
        assert (DIST / z / "latest").read_text().strip() == "global_step2"
        assert not (DIST / z / "zero_to_fp32.py").exists()
        sd = oracle(DIST / z)
        assert sd["head.weight"] is sd["emb.weight"]
