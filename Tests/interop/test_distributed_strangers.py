"""DCP folders written the ways users write them (scripts/stranger/make_dcp.py, on the fly, gloo on CPU): FSDP2 + tensor
parallel on a 2-D mesh (`_StridedShard`), torchtitan's layout (model keys at the root beside a flattened optimizer),
get_optimizer_state_dict(flatten_optimizer_state_dict=True), DefaultSavePlanner(flatten_state_dict=False), and a
chunk with a corrupted byte. Each is compared with torch's dcp_to_torch_save. These were bugs found
by the stranger pass (/work/notes/stranger15.md B1, B2, B3, B5), fixed since."""
import io
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from distlib import flat_tensors as flat
from conftest import ROOT, assert_clean_failure, run, run_json

sys.path.insert(0, str(ROOT / "scripts" / "stranger"))
import make_dcp  # noqa: E402

_made = {}


def made(tmp_path_factory, case):
    """The folder make_dcp's `case` writes (once per session)."""
    if case not in _made:
        out = tmp_path_factory.mktemp("strangers") / case
        fn, ws = make_dcp.CASES[case]
        if ws:
            port = 30100 + list(make_dcp.CASES).index(case) + (os.getpid() % 40) * 20
            mp.spawn(fn, args=(ws, port, str(out)), nprocs=ws, join=True)
        else:
            fn(str(out))
        _made[case] = out
    return _made[case]


def oracle(folder, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / "oracle.pt"
    dcp_to_torch_save(folder, out)
    return torch.load(out, weights_only=True)




def assert_same(got, want):
    assert list(got) == list(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype and g.shape == w.shape, k
        assert torch.equal(g.contiguous().view(-1).view(torch.uint8), w.contiguous().view(-1).view(torch.uint8)), k


def test_fsdp_tp_strided_shard(tmp_path_factory, tmp_path):
    """FSDP2 over `dp` + ColwiseParallel/RowwiseParallel over `tp` of a (2, 2) mesh: `_StridedShard(dim=0, sf=2)`
    placements; the model record consolidated to .pt and a sharded folder equals dcp_to_torch_save's."""
    folder = made(tmp_path_factory, "fsdp-tp")
    want = oracle(folder, tmp_path)["model"]
    run("consolidate", folder, tmp_path / "o.pt", check=0)
    assert_same(torch.load(tmp_path / "o.pt", weights_only=True), want)
    from safetensors.torch import load_file

    run("consolidate", folder, tmp_path / "sh", "--max-shard-size", "1KB", check=0)
    got = {}
    for f in sorted((tmp_path / "sh").glob("*.safetensors")):
        got.update(load_file(f))
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_torchtitan_layout_consolidates_weights_only(tmp_path_factory, tmp_path):
    folder = made(tmp_path_factory, "torchtitan")
    whole = oracle(folder, tmp_path)
    want = {k: v for k, v in whole.items() if torch.is_tensor(v)}  # the model keys torchtitan puts at the root
    assert len(want) == 16
    p = run("consolidate", folder, tmp_path / "o.safetensors", check=0)
    assert "optimizer" in p.stderr  # the line saying the optimizer record was left out
    from safetensors.torch import load_file

    got = load_file(tmp_path / "o.safetensors")
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_flattened_optimizer_record_is_refused(tmp_path_factory, tmp_path):
    folder = made(tmp_path_factory, "fsdp2-options")
    assert run_json("consolidate", folder, tmp_path / "m.pt")["record"] == "model"
    p = run("consolidate", folder, tmp_path / "o.pt", "--record", "optimizer")
    assert_clean_failure(p)
    assert "optimizer state" in p.stderr and not (tmp_path / "o.pt").exists()


def test_corrupted_chunk_byte_is_refused(tmp_path_factory, tmp_path):
    src = made(tmp_path_factory, "fsdp2-options")
    folder = tmp_path / "flip"
    shutil.copytree(src, folder)
    md = pickle.loads((folder / ".metadata").read_bytes())
    si = next(s for i, s in md.storage_data.items() if i.fqn == "model.tok_embeddings.weight" and i.offset[0] > 0)
    path = folder / si.relative_path
    b = bytearray(path.read_bytes())
    zi = zipfile.ZipFile(io.BytesIO(bytes(b[si.offset:si.offset + si.length]))).getinfo("archive/data/0")
    h = b[si.offset + zi.header_offset:][:30]
    b[si.offset + zi.header_offset + 30 + int.from_bytes(h[26:28], "little") + int.from_bytes(h[28:30], "little")] ^= 1
    path.write_bytes(bytes(b))
    p = run("consolidate", folder, tmp_path / "o.pt")
    assert_clean_failure(p)
    assert not (tmp_path / "o.pt").exists()


def test_noflatten_folder_reads(tmp_path_factory, tmp_path):
    folder = made(tmp_path_factory, "noflatten")
    whole = oracle(folder, tmp_path)
    # The whole file is the weights (no record named like weights): its tensors, nested ones by their dotted path, as
    # ckpt reads the same dict saved by torch.save.
    want = flat(whole)
    run("info", folder, check=0)
    run("consolidate", folder, tmp_path / "o.pt", check=0)
    assert_same(torch.load(tmp_path / "o.pt", weights_only=True), want)
