"""A flipped bit inside the bytes a distributed checkpoint's tensors are read from: torch.save zips declare a CRC-32
for every record (a DCP chunk item is one, a DeepSpeed partition is a record of the optim file), and ckpt checks it
as it checks a .pt file's records: exit 2, one line naming the file and record, nothing written. (torch's own
consolidation does not check: dcp_to_torch_save and zero_to_fp32 return the flipped value, as the tests show.)"""

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

import distlib
from conftest import run

DIST = Path(__file__).resolve().parents[2] / "fixtures" / "distributed"


def _flip_in_record(path, item_offset, item_length, record):
    """Flips one bit of the first byte of `record`'s data in the zip at [item_offset, item_offset + item_length) of
    `path` (a whole file when item_offset is 0 and item_length is its size)."""
    data = bytearray(Path(path).read_bytes())
    z = zipfile.ZipFile(io.BytesIO(bytes(data[item_offset:item_offset + item_length])))
    info = z.getinfo(record) if record in z.namelist() else next(i for i in z.infolist() if i.filename.endswith(record))
    head = item_offset + info.header_offset
    name_len = int.from_bytes(data[head + 26:head + 28], "little")
    extra_len = int.from_bytes(data[head + 28:head + 30], "little")
    data[head + 30 + name_len + extra_len] ^= 0x40
    Path(path).write_bytes(bytes(data))
    return info.filename


def flipped_dcp(src, tmp, transposed=False):
    """A copy of a DCP folder with one bit flipped in a chunk's data record: the second chunk of the first split model
    tensor, or (transposed) the chunk saved as `t()` (its data is not in row-major order: checked before streaming)."""
    dst = Path(tmp) / f"{Path(src).name}-flipped"
    import shutil

    shutil.copytree(src, dst)
    md = pickle.load(open(dst / ".metadata", "rb"))
    if transposed:
        idx = next(i for i in md.storage_data if i.fqn == "model.transposed" and i.offset is not None)
    else:
        fqn, meta, _ = distlib._split_tensor(md)
        c1 = [c for c in meta.chunks if all(s > 0 for s in c.sizes)][1]
        idx = distlib._index_of(md, fqn, c1.offsets)
    info = md.storage_data[idx]
    _flip_in_record(dst / info.relative_path, info.offset, info.length, "archive/data/0")
    return dst, info.relative_path, idx.fqn


ZIP_DCP = [f for f in distlib.DCP_FOLDERS if f != "dcp-safetensors-ws2"]  # safetensors declares no checksum


@pytest.mark.parametrize("output", ["out.pt", "out.safetensors"])
@pytest.mark.parametrize("folder", ZIP_DCP)
def test_flipped_bit_in_a_dcp_chunk_is_refused(tmp_path, folder, output):
    src, file, fqn = flipped_dcp(DIST / folder, tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    record = "optim" if fqn.startswith("optim") else None
    p = run("consolidate", src, outdir / output, *(["--record", record] if record else []))
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckpt: ") and file in lines[0] and "crc-32" in lines[0], p.stderr
    assert os.listdir(outdir) == []
    # torch's consolidation takes the flipped value without a word: the check is ckpt's own.
    want = distlib.dcp_oracle(DIST / folder)
    got = distlib.dcp_oracle(src)
    assert not torch.equal(distlib.bits(distlib.flat_tensors(got)[fqn]), distlib.bits(distlib.flat_tensors(want)[fqn]))


def test_flipped_bit_in_a_transposed_chunk_is_refused(tmp_path):
    src, file, _ = flipped_dcp(DIST / "dcp-dtensor-ws2", tmp_path, transposed=True)
    out = tmp_path / "out.pt"
    p = run("convert", src, out)
    assert p.returncode == 2 and file in p.stderr and "crc-32" in p.stderr, p.stderr
    assert not out.exists()
    # The folder unflipped converts: the check is on the bytes, not on the transposed layout.
    assert run("convert", DIST / "dcp-dtensor-ws2", out).returncode == 0


def _without_deepspeed():
    """A pickle module whose Unpickler stands in plain objects for DeepSpeed's classes (not installed in this venv):
    enough to read the optimizer file's tensors."""
    import types

    class Stub:
        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            pass

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module.startswith("deepspeed"):
                return (lambda *a: a[0] if a else None) if name == "ZeroStageEnum" else Stub
            return super().find_class(module, name)

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="without_deepspeed")


@pytest.mark.parametrize("folder", distlib.ZERO_FOLDERS)
def test_flipped_bit_in_a_zero_partition_is_refused(tmp_path, folder):
    import shutil

    dst = tmp_path / folder
    shutil.copytree(DIST / folder, dst)
    tag = (dst / "latest").read_text().strip()
    optim = sorted(p for p in (dst / tag).iterdir() if p.name.endswith("_optim_states.pt"))[-1]
    # The first fp32 partition: the record of the optimizer file's first float32 storage of the flat groups.
    sd = torch.load(optim, map_location="cpu", weights_only=False, pickle_module=_without_deepspeed())
    sd = sd["optimizer_state_dict"]
    flat = (sd.get("single_partition_of_fp32_groups") or sd.get("fp32_flat_groups"))[0]
    key = None
    with zipfile.ZipFile(optim) as z:
        for name in z.namelist():
            # The storage may be larger than the partition (the last rank's is cut by its padding).
            if "/data/" in name and z.getinfo(name).file_size >= flat.numel() * 4:
                if flat.detach().contiguous().view(-1).numpy().tobytes() in z.read(name):
                    key = name
                    break
    assert key, "the partition's record"
    record = _flip_in_record(optim, 0, optim.stat().st_size, key)
    out = tmp_path / "out.safetensors"
    p = run("consolidate", dst, out)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and optim.name in lines[0] and record in lines[0] and "crc-32" in lines[0], p.stderr
    assert not out.exists()
