"""torch.distributed.checkpoint folders beyond the acceptance tests of test_distributed.py: `scan` of a folder judges
every pickle torch's loader unpickles (.metadata, non-tensor items, tensor chunks), `info`'s layout fields against
torch's own unpickling of .metadata, folders torch writes on the fly (one process with tensors inside lists and a
transposed chunk; use_collectives=False), and Hugging Face model folders still read as before."""
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, assert_clean_failure, run, run_json
from distlib import flat_tensors as flat

DIST = FIXTURES / "distributed"
DCP = ["dcp-fsdp2-ws2", "dcp-fsdp2-bf16-ws4", "dcp-dtensor-ws2", "dcp-safetensors-ws2", "dcp-threads-ws2",
       "dcp-multifile-ws2"]


def metadata(folder):
    with open(folder / ".metadata", "rb") as f:
        return pickle.load(f)


def item_bytes(folder, info):
    with open(folder / info.relative_path, "rb") as f:
        f.seek(info.offset)
        return f.read(info.length)




def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("name", DCP)
def test_scan_judges_every_pickle_torch_unpickles(name):
    """A clean folder: exit 0, no dangerous row; the pickles are .metadata, then one per item stored as a torch.save
    zip (non-tensor items, unpickled with weights_only=False, and tensor chunks, with weights_only=True), as torch's
    FileSystemReader reads them; weights_only says torch.load does not read a folder."""
    folder = DIST / name
    report = run_json("scan", folder)
    md = metadata(folder)
    zips = [i for i, s in md.storage_data.items() if item_bytes(folder, s)[:4] == b"PK\x03\x04"]
    labels = [p["pickle"] for p in report["pickles"]]
    assert labels[0] == ".metadata"
    assert len(labels) == 1 + len(zips), labels
    assert report["dangerous"] == 0 and report["verdict"] == "safe", report["globals"]
    assert report["weights_only"]["loads"] is False
    assert "folder" in report["weights_only"]["reason"]


def evil_copy(tmp_path, name="dcp-dtensor-ws2"):
    dst = tmp_path / name
    shutil.copytree(DIST / name, dst)
    return dst


class Evil:
    """Pickles as a call of os.system (pickling never runs it; ckpt never unpickles)."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_scan_refuses_a_metadata_that_calls_a_disallowed_global(tmp_path):
    """A .metadata edited with pickle so that it calls os.system: scan exits 1 naming it; reading refuses it with one
    line (exit 2); a rewrite refuses it (exit 1) and writes nothing."""
    folder = evil_copy(tmp_path)
    md = metadata(folder)
    md.version = Evil()
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(md, f, protocol=4)
    p = run("scan", folder)
    assert p.returncode == 1, p.stderr
    assert "system" in p.stdout and "dangerous" in p.stdout
    report = json.loads(run("scan", folder, "--json").stdout)
    assert [g["name"] for g in report["globals"] if g["class"] == "dangerous"] == [f"{os.system.__module__}.system"]
    keys = run("keys", folder)
    assert_clean_failure(keys, "system")
    out = tmp_path / "out.safetensors"
    conv = run("convert", folder, out)
    assert conv.returncode == 1 and "system" in conv.stderr
    assert not out.exists()


def test_scan_judges_non_tensor_items(tmp_path):
    """A non-tensor item replaced (appended to its .distcp, .metadata pointing at it) by a torch.save of an object
    that calls os.system: torch would unpickle it with weights_only=False. scan exits 1 naming it and the item."""
    folder = evil_copy(tmp_path)
    md = metadata(folder)
    index = next(i for i in md.storage_data if i.offset is None)
    info = md.storage_data[index]
    buf = io.BytesIO()
    torch.save(Evil(), buf)
    path = folder / info.relative_path
    start = path.stat().st_size
    with open(path, "ab") as f:
        f.write(buf.getvalue())
    info.offset, info.length = start, len(buf.getvalue())
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(md, f, protocol=4)
    report = json.loads(run("scan", folder, "--json").stdout)
    bad = [g for g in report["globals"] if g["class"] == "dangerous"]
    assert [g["name"].split(".")[-1] for g in bad] == ["system"], bad
    assert bad[0]["pickle"].startswith(f"{info.relative_path}@{start}") and index.fqn in bad[0]["pickle"]
    assert run("scan", folder).returncode == 1


def torch_bytes_value(folder, info):
    return torch.load(io.BytesIO(item_bytes(folder, info)), weights_only=False)


@pytest.mark.parametrize("name", DCP)
def test_info_layout_against_torch_reading_of_the_metadata(name):
    """info --json's `distributed` fields from torch's own unpickling of .metadata: the chunks of every tensor in
    state_dict_metadata order, the data files, model and optimizer bytes (by the path's first element), the
    non-tensor items with their values as torch.load gives them (repr), and the world size the folder was written
    with."""
    folder = DIST / name
    d = run_json("info", folder)["distributed"]
    md = metadata(folder)
    tensors = {k: m for k, m in md.state_dict_metadata.items() if hasattr(m, "chunks")}
    assert list(d["chunks"].items()) == [(k, len(m.chunks)) for k, m in tensors.items()]
    assert sorted(d["files"]) == sorted({s.relative_path for s in md.storage_data.values()})
    assert d["world_size"] == int(name.rsplit("ws", 1)[1])

    def nbytes(m):
        return m.size.numel() * torch.empty((), dtype=m.properties.dtype).element_size()

    optim = sum(nbytes(m) for k, m in tensors.items() if md.planner_data[k][0].startswith("optim"))
    model = sum(nbytes(m) for k, m in tensors.items() if not md.planner_data[k][0].startswith("optim"))
    assert (d["model_bytes"], d["optimizer_bytes"]) == (model, optim)
    items = [(i.fqn, s) for i, s in md.storage_data.items() if i.offset is None]
    order = list(md.state_dict_metadata)
    items.sort(key=lambda x: order.index(x[0]))
    assert list(d["other_items"]) == [k for k, _ in items]
    for k, s in items:
        assert d["other_items"][k] == repr(torch_bytes_value(folder, s)), k


WRITER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import distribute_tensor, Shard
    from torch.distributed.device_mesh import init_device_mesh
    out, port = sys.argv[1], sys.argv[2]

    def worker(rank, ws):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        dist.init_process_group("gloo", rank=rank, world_size=ws)
        mesh = init_device_mesh("cpu", (ws,))
        sd = {"a": distribute_tensor(torch.arange(20.).reshape(5, 4), mesh, [Shard(0)]),
              "b": distribute_tensor(torch.arange(12, dtype=torch.int64).reshape(3, 4), mesh, [Shard(1)]),
              "c": torch.ones(3) * 2, "extra": {"epoch": 3}}
        dcp.save(sd, checkpoint_id=out, use_collectives=False)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(worker, args=(2,), nprocs=2)
    """)


def test_use_collectives_false_merges_the_ranks(tmp_path):
    """use_collectives=False: one __R.metadata per rank, each describing its own chunks. ckpt merges them in rank
    order (dcp_to_torch_save reads only __0.metadata and leaves rank 1's rows of a Shard(0) tensor uninitialised); the
    tensors are the ones each rank saved, bit for bit."""
    out = tmp_path / "nocoll"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    subprocess.run([sys.executable, str(script), str(out), "29761"], check=True, capture_output=True, timeout=240)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".metadata") == ["__0.metadata", "__1.metadata"]
    st = tmp_path / "out.safetensors"
    run("convert", out, st, check=0)
    got = load_file(st)
    want = {"a": torch.arange(20.).reshape(5, 4), "b": torch.arange(12, dtype=torch.int64).reshape(3, 4),
            "c": torch.ones(3) * 2}
    assert list(got) == list(want) or sorted(got) == sorted(want)
    for k, t in want.items():
        assert same_bits(got[k], t), k
    info = run_json("info", out)
    assert info["distributed"]["world_size"] == 2
    assert any("use_collectives=False" in n for n in info["distributed"]["notes"])
    assert info["distributed"]["other_items"] == {"extra.epoch": "3"}


def test_one_process_folder_with_lists_scalars_and_a_transposed_chunk(tmp_path):
    """dcp.save without a process group: a tensor inside a list, a dict inside a list, a 0-d tensor, a transposed
    view (saved with its strides) and a slice view. keys in dcp_to_torch_save's order, every tensor bit-identical in
    the .pt and .safetensors convert writes, and --record reaching into the list."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    big = torch.arange(20.).reshape(4, 5)
    sd = {"t": big.t(), "s": big[1:3], "scalar": torch.tensor(3.5),
          "nest": {"l": [torch.ones(2), {"k": 1, "w": torch.arange(3)}]}, "i64": torch.arange(6).reshape(2, 3)}
    folder = tmp_path / "one"
    dcp.save(sd, checkpoint_id=folder)
    oracle_path = tmp_path / "oracle.pt"
    dcp_to_torch_save(folder, oracle_path)
    oracle = torch.load(oracle_path, weights_only=False)
    want = flat(oracle)
    assert [k["name"] for k in run_json("keys", folder)] == list(want)
    for ext in ("pt", "safetensors"):
        out = tmp_path / f"out.{ext}"
        run("convert", folder, out, check=0)
        got = load_file(out) if ext == "safetensors" else flat(torch.load(out, weights_only=True))
        assert sorted(got) == sorted(want)
        for k, t in want.items():
            assert same_bits(got[k], t), (ext, k)
    assert [k["name"] for k in run_json("keys", folder, "--record", "nest")] == list(flat(oracle["nest"]))


def test_hugging_face_model_folders_are_not_claimed(tmp_path):
    """A model folder (model.safetensors) is read through its weights file as before, even beside a file named like
    a save_distributed shard; a folder of shard-named files is read as save_distributed."""
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": torch.ones(2, 2)}, folder / "model.safetensors")
    save_file({"w": torch.zeros(2, 2)}, folder / "shard-00001-model-00001-of-00001.safetensors")
    info = run_json("info", folder)
    assert info["format"] == "safetensors, from model.safetensors"
    assert "distributed" not in info
    (folder / "model.safetensors").unlink()
    info = run_json("info", folder)
    assert "save_distributed" in info["format"] and info["distributed"]["world_size"] == 1


@pytest.mark.parametrize("name", DCP + ["hf-distributed-ws2"])
def test_every_record_converts_bit_identical(tmp_path, name):
    """Every record that holds tensors (model, optim, aux, ...; the whole dict of a flat folder), converted with
    --record to .pt and .safetensors: each tensor bit-identical to dcp_to_torch_save's (torch's HF reader's for the
    save_distributed folder), the .pt in the oracle's order."""
    import distlib

    sd = distlib.oracle(DIST / name)
    nested = any(not torch.is_tensor(v) for v in sd.values())
    groups = {k: flat(v) for k, v in sd.items() if not torch.is_tensor(v)} if nested else {None: flat(sd)}
    checked = 0
    for record, want in groups.items():
        if not want:
            continue
        args = ["--record", record] if record else []
        for ext in ("pt", "safetensors"):
            out = tmp_path / f"{record}.{ext}"
            run("convert", DIST / name, out, *args, check=0)
            got = load_file(out) if ext == "safetensors" else flat(torch.load(out, weights_only=True))
            if ext == "pt":
                assert list(got) == list(want)
            assert sorted(got) == sorted(want)
            for k, t in want.items():
                assert same_bits(got[k], t), (record, ext, k)
                checked += 1
    assert checked > 0


def test_save_distributed_ranks_disagreeing_on_a_dtype_are_refused(tmp_path):
    """A tensor two ranks saved, one of them (header edited, same length) as I32 instead of F32: refused with one line
    naming the tensor, nothing written."""
    import struct

    src = DIST / "hf-distributed-ws2"
    folder = tmp_path / "hf"
    shutil.copytree(src, folder)
    files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")

    def header(path):
        data = path.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        return json.loads(data[8:8 + n])

    first, last = header(files[0]), header(files[-1])
    name = next(k for k in last if k != "__metadata__" and k in first and last[k]["dtype"] == "F32")
    data = bytearray(files[-1].read_bytes())
    old = f'"{name}":{{"dtype":"F32"'.encode()
    assert data.count(old) == 1
    start = data.index(old)
    data[start:start + len(old)] = old.replace(b"F32", b"I32")
    files[-1].write_bytes(bytes(data))
    out = tmp_path / "o"
    out.mkdir()
    p = run("convert", folder, out / "x.safetensors")
    assert_clean_failure(p, name)
    assert os.listdir(out) == []
