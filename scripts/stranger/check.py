#!/usr/bin/env python3
"""Check `ckpt` on a distributed checkpoint folder someone else's code wrote, against the framework's own consolidation.

    CKPT_BIN=.build/debug/ckpt .venv/bin/python scripts/stranger/check.py DIR [--oracle dcp|zero|hf] [--no-damage]

- runs `ckpt info`, `keys --json`, `scan` (exit codes; keys compared with the oracle's tensors of the record
  consolidate picks);
- `ckpt consolidate` to OUT.pt, OUT.safetensors, a sharded folder (--max-shard-size 1KB) and OUT.pt --half, then
  `--record R` for every other top-level record; each output loaded with torch.load(weights_only=True) / safe_open and
  compared bit for bit (dtype, shape, bytes) with the oracle: dcp_to_torch_save (dcp), DeepSpeed's
  get_fp32_state_dict_from_zero_checkpoint run in .venv-ds (zero), torch's HuggingFaceStorageReader (hf);
- damages copies (a data file deleted / truncated / overwritten, .metadata truncated, a chunk dropped from .metadata,
  a chunk's size changed) and checks each is refused by consolidate with one line `ckpt: ...`, exit 2, nothing written.

Prints one line per check, `OK ...` or `BUG ...`; exit 1 when any BUG.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CKPT = os.environ.get("CKPT_BIN") or str(ROOT / ".build" / "debug" / "ckpt")
DS_PY = os.environ.get("CKPT_DS_PYTHON") or "/work/main/.venv-ds/bin/python"
bugs = []


def say(ok, msg):
    print(("OK   " if ok else "BUG  ") + msg, flush=True)
    if not ok:
        bugs.append(msg)


def run(*args, timeout=120):
    try:
        p = subprocess.run([CKPT, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return p


def flat(value, prefix=""):
    out = {}
    if torch.is_tensor(value):
        out[prefix] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out.update(flat(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def compare(label, got, want, ordered=True):
    if (list(got) if ordered else sorted(got)) != (list(want) if ordered else sorted(want)):
        extra = [k for k in got if k not in want][:5]
        missing = [k for k in want if k not in got][:5]
        say(False, f"{label}: names differ (extra {extra}, missing {missing}, order same set: "
                   f"{sorted(got) == sorted(want)})")
        return False
    for k, b in want.items():
        a = got[k]
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            say(False, f"{label}: {k}: {a.dtype}{list(a.shape)} vs oracle {b.dtype}{list(b.shape)}")
            return False
        if not torch.equal(bits(a), bits(b)):
            say(False, f"{label}: {k}: bytes differ")
            return False
    say(True, f"{label}: {len(want)} tensors bit-identical")
    return True


def half(d):
    return {k: v.half() if v.is_floating_point() and v.dtype not in (torch.float16,) and "float8" not in str(v.dtype)
            else v for k, v in d.items()}


_ZERO = """
import sys, torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint as f
kw = eval(sys.argv[4]) if len(sys.argv) > 4 else {}
torch.save(f(sys.argv[1], tag=sys.argv[2] or None, **kw), sys.argv[3])
"""


def load_clone(path):
    sd = torch.load(path, weights_only=True, map_location="cpu")
    return sd


def oracle(folder, kind, tmp):
    out = Path(tmp) / "oracle.pt"
    if kind == "dcp":
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
        dcp_to_torch_save(folder, out)
    elif kind == "dcp-st":  # SerializationFormat.SAFETENSORS: torch cannot read it back; the safetensors library can
        sys.path.insert(0, str(ROOT / "Tests" / "interop"))
        import distlib
        torch.save(distlib.dcp_safetensors_reading(folder), out)
    elif kind == "hf":
        from torch.distributed.checkpoint import HuggingFaceStorageReader
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
        sd = {}
        _load_state_dict(sd, storage_reader=HuggingFaceStorageReader(str(folder)),
                         planner=_EmptyStateDictLoadPlanner(), no_dist=True)
        torch.save(sd, out)
    elif kind.startswith("zero"):
        folder = Path(folder)
        base, tag = (folder, "") if (folder / "latest").exists() else (folder.parent, folder.name)
        env = dict(os.environ, DS_ACCELERATOR="cpu", PATH=str(Path(DS_PY).parent) + ":" + os.environ["PATH"])
        extra = ["{'exclude_frozen_parameters': True}"] if kind == "zero-exclude" else []
        p = subprocess.run([DS_PY, "-c", _ZERO, str(base), tag, str(out), *extra], capture_output=True, text=True,
                           env=env, timeout=600)
        if p.returncode != 0:
            raise RuntimeError("oracle failed: " + p.stderr[-1500:])
    return load_clone(out)


def load_sharded(d):
    from safetensors import safe_open
    d = Path(d)
    idx = d / "model.safetensors.index.json"
    files = [d / "model.safetensors"] if not idx.exists() else \
        [d / f for f in dict.fromkeys(json.loads(idx.read_text())["weight_map"].values())]
    out = {}
    for f in files:
        with safe_open(f, "pt") as s:
            for k in s.keys():
                out[k] = s.get_tensor(k)
    return out


def check(folder, kind="dcp", damage=True):
    folder = Path(folder)
    name = folder.name
    tmp = tempfile.mkdtemp(prefix="stranger-check-")
    try:
        for cmd in (["info"], ["keys", "--json"], ["scan"]):
            p = run(*cmd, folder)
            if p is None:
                say(False, f"{name}: ckpt {cmd[0]} hangs (>120 s)")
                continue
            lines = p.stderr.strip().splitlines()
            say(p.returncode in (0, 1) or (p.returncode == 2 and len(lines) == 1),
                f"{name}: ckpt {' '.join(cmd)} exit {p.returncode}" + (f": {p.stderr.strip()[:300]}" if p.stderr else ""))
        try:
            want_all = oracle(folder, kind, tmp)
        except Exception as e:
            say(False, f"{name}: oracle failed ({type(e).__name__}: {str(e)[:300]}); ckpt's answer is unchecked")
            want_all = None
        outpt = Path(tmp) / "out.pt"
        p = run("consolidate", folder, outpt, "--json")
        if p is None or p.returncode != 0:
            say(False, f"{name}: consolidate exit {p and p.returncode}: {p and p.stderr.strip()[:400]}")
            return
        info = json.loads(p.stdout)
        record = info["record"]
        if p.stderr.strip():
            print(f"     (consolidate stderr: {p.stderr.strip()[:300]})")
        if want_all is None:
            return
        want = flat(want_all[record]) if record is not None else flat(want_all)
        print(f"     record {record!r}: {len(want)} tensors in the oracle")
        keys = json.loads(run("keys", folder, "--json").stdout)
        klist = keys if isinstance(keys, list) else keys.get("tensors", keys)
        if isinstance(klist, list):
            got = [(k["name"], k["dtype"], k["shape"]) for k in klist]
            exp = [(k, str(v.dtype).replace("torch.", ""), list(v.shape)) for k, v in want.items()]
            say(got == exp, f"{name}: keys --json lists the oracle's {len(exp)} tensors in order"
                + ("" if got == exp else f" (got {got[:3]}..., expected {exp[:3]}...)"))
        compare(f"{name}: consolidate .pt", flat(torch.load(outpt, weights_only=True)), want)
        o = Path(tmp) / "out.safetensors"
        p = run("consolidate", folder, o)
        if p.returncode == 0:
            from safetensors import safe_open
            with safe_open(o, "pt") as s:
                got = {k: s.get_tensor(k) for k in s.keys()}
            compare(f"{name}: consolidate .safetensors", got, want, ordered=False)
        else:
            say(False, f"{name}: consolidate .safetensors exit {p.returncode}: {p.stderr.strip()[:300]}")
        o = Path(tmp) / "sharded"
        p = run("consolidate", folder, o, "--max-shard-size", "1KB")
        if p.returncode == 0:
            compare(f"{name}: consolidate sharded 1KB ({len(os.listdir(o))} files)", load_sharded(o), want,
                    ordered=False)
        else:
            say(False, f"{name}: consolidate sharded exit {p.returncode}: {p.stderr.strip()[:300]}")
        o = Path(tmp) / "half.pt"
        p = run("consolidate", folder, o, "--half")
        if p.returncode == 0:
            compare(f"{name}: consolidate --half", flat(torch.load(o, weights_only=True)), half(want))
        else:
            say(False, f"{name}: consolidate --half exit {p.returncode}: {p.stderr.strip()[:300]}")
        if isinstance(want_all, dict) and record is not None:
            for r, v in want_all.items():
                if r == record:
                    continue
                o = Path(tmp) / f"rec-{len(os.listdir(tmp))}.pt"
                p = run("consolidate", folder, o, "--record", r)
                ft = flat(v) if not torch.is_tensor(v) else {r: v}
                if p.returncode == 0:
                    compare(f"{name}: consolidate --record {r}", flat(torch.load(o, weights_only=True)), ft)
                else:
                    lines = p.stderr.strip().splitlines()
                    say(p.returncode == 2 and len(lines) == 1 and not o.exists(),
                        f"{name}: consolidate --record {r} ({len(ft)} tensors) refused: exit {p.returncode}: "
                        f"{p.stderr.strip()[:250]}")
        if damage:
            damages(folder, kind, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def md_exists(folder):
    return (Path(folder) / ".metadata").exists()


def data_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith((".distcp", ".safetensors", ".pt"))
                  or (Path(folder) / f).is_dir())


def damages(folder, kind, tmp):
    name = Path(folder).name
    cases = []
    files = [f for f in Path(folder).rglob("*") if f.is_file() and f.suffix in (".distcp", ".safetensors", ".pt")]
    files.sort()
    if files:
        big = max(files, key=lambda f: f.stat().st_size)
        cases.append(("delete " + big.name, lambda d, f=big: (d / f.relative_to(folder)).unlink()))
        cases.append(("truncate " + big.name + " to half",
                      lambda d, f=big: os.truncate(d / f.relative_to(folder), f.stat().st_size // 2)))
        cases.append(("truncate " + big.name + " by 1 byte",
                      lambda d, f=big: os.truncate(d / f.relative_to(folder), f.stat().st_size - 1)))

        def zero_tail(d, f=big):
            p = d / f.relative_to(folder)
            b = bytearray(p.read_bytes())
            b[len(b) // 2:] = bytes(len(b) - len(b) // 2)
            p.write_bytes(bytes(b))
        if not md_exists(folder):
            cases.append(("zero the second half of " + big.name, zero_tail))
    md = Path(folder) / ".metadata"
    if md.exists():
        cases.append((".metadata truncated", lambda d: os.truncate(d / ".metadata", md.stat().st_size // 2)))

        def drop_chunk(d):
            m = pickle.loads((d / ".metadata").read_bytes())
            for k, v in m.state_dict_metadata.items():
                if hasattr(v, "chunks") and len(v.chunks) > 1:
                    v.chunks.pop()
                    break
            else:
                raise ValueError("no tensor with 2 chunks")
            (d / ".metadata").write_bytes(pickle.dumps(m))
        cases.append((".metadata with a chunk dropped", drop_chunk))

        def grow_size(d):
            import torch as t
            m = pickle.loads((d / ".metadata").read_bytes())
            for k, v in m.state_dict_metadata.items():
                if hasattr(v, "chunks") and len(v.size) == 2 and "optim" not in k and v.size[0] > 0:
                    last = max(v.chunks, key=lambda c: c.offsets[0] + c.sizes[0])
                    grow = [c for c in v.chunks if c.offsets[0] + c.sizes[0] == last.offsets[0] + last.sizes[0]]
                    v.size = t.Size([v.size[0] + 1, v.size[1]])
                    for c in grow:
                        c.sizes = t.Size([c.sizes[0] + 1, c.sizes[1]])
                    break
            else:
                raise ValueError("no 2-D tensor")
            (d / ".metadata").write_bytes(pickle.dumps(m))
        cases.append((".metadata: a tensor and its last chunk one row longer than stored", grow_size))

        def dtype_change(d):
            m = pickle.loads((d / ".metadata").read_bytes())
            for k, v in m.state_dict_metadata.items():
                if hasattr(v, "chunks") and v.properties.dtype == torch.float32 and len(v.size) >= 1:
                    v.properties.dtype = torch.int32
                    break
            else:
                raise ValueError("no float32 tensor")
            (d / ".metadata").write_bytes(pickle.dumps(m))
        cases.append((".metadata: a float32 tensor said to be int32", dtype_change))
    if md.exists():
        m = pickle.loads(md.read_bytes())
        tensor_items = [(i, s) for i, s in m.storage_data.items() if i.offset is not None
                        and isinstance(m.state_dict_metadata[i.fqn], type(m.state_dict_metadata[i.fqn]))
                        and hasattr(m.state_dict_metadata[i.fqn], "chunks") and "optim" not in i.fqn
                        and s.length > 0]
        if tensor_items:
            idx, si = tensor_items[len(tensor_items) // 2]

            def flip(d, si=si):
                import io
                import zipfile
                p = d / si.relative_path
                b = bytearray(p.read_bytes())
                try:
                    z = zipfile.ZipFile(io.BytesIO(bytes(b[si.offset:si.offset + si.length])))
                    zi = [z.getinfo(n) for n in z.namelist() if n.endswith("/data/0")][0]
                    hdr = bytes(b[si.offset + zi.header_offset:si.offset + zi.header_offset + 30])
                    start = si.offset + zi.header_offset + 30 + int.from_bytes(hdr[26:28], "little") + \
                        int.from_bytes(hdr[28:30], "little")
                except Exception:  # safetensors variant: the blob; flip the last byte of the file
                    start = len(b) - 1
                b[start] ^= 0x40
                p.write_bytes(bytes(b))
            cases.append((f"one byte of {idx.fqn} at {list(idx.offset)} flipped in {si.relative_path}", flip))

            def zero_item(d, si=si):
                p = d / si.relative_path
                b = bytearray(p.read_bytes())
                b[si.offset:si.offset + si.length] = bytes(si.length)
                p.write_bytes(bytes(b))
            cases.append((f"item {idx.fqn} at {list(idx.offset)} zeroed in {si.relative_path}", zero_item))
    for label, fn in cases:
        d = Path(tmp) / ("dmg-" + str(len(os.listdir(tmp))))
        shutil.copytree(folder, d)
        try:
            fn(d)
        except Exception as e:
            print(f"     (damage {label} not applied: {e})")
            continue
        for out in ("o.pt", "o.safetensors"):
            o = Path(tmp) / ("d" + str(len(os.listdir(tmp))) + out)
            p = run("consolidate", d, o)
            if p is None:
                say(False, f"{name}: damaged ({label}): consolidate hangs")
                continue
            lines = p.stderr.strip().splitlines()
            good = p.returncode == 2 and len(lines) == 1 and lines[0].startswith("ckpt: ") and not o.exists()
            if p.returncode == 0:
                # accepted: only fine if torch's reading gives the same and the damage did not touch what is read
                say(False, f"{name}: damaged ({label}): consolidate {out} exit 0 (accepted): {p.stdout.strip()[:200]}")
            else:
                say(good, f"{name}: damaged ({label}): {out} exit {p.returncode}: {p.stderr.strip()[:300]}"
                    + ("" if not o.exists() else " (output written!)"))
            break_after = out  # one output kind is enough once it is refused
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    kind = "dcp"
    if "--oracle" in args:
        i = args.index("--oracle")
        kind = args[i + 1]
        del args[i:i + 2]
    damage = "--no-damage" not in args
    args = [a for a in args if a != "--no-damage"]
    for f in args:
        print(f"== {f} ({kind})", flush=True)
        check(f, kind, damage)
    print(f"{len(bugs)} bug lines")
    sys.exit(1 if bugs else 0)
