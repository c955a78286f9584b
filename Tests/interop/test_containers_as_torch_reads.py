"""ckpt reads the container torch.load reads, and flags a file whose bytes another reader reads differently.

fixtures/containers/ (scripts/make-container-fixtures.py) holds one file per class: data before a zip, a tar that
is also a zip or a pickle stream, names that differ only in case, two end records, local and central names that
differ, duplicate names, and (not ambiguous, but read by torch) a data.pkl with a wrong CRC and a plain torch 0.1.x
tar. Each payload only creates a marker file; real torch.load(weights_only=False) runs it in a throwaway
subprocess whose working folder is a fresh temp folder, never in this process.
"""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import FIXTURES, run

CONTAINERS = FIXTURES / "containers"
FACTS = json.loads((CONTAINERS / "facts.json").read_text())
FILES = sorted(CONTAINERS.glob("*.pt"))
PAYLOADS = [p for p in FILES if FACTS[p.name]["payload"]]
MARKER = "ckpt-container-marker"


def torch_runs_payload(path, folder):
    """torch.load(path, weights_only=False) in a fresh interpreter whose working folder is `folder`; whether the
    payload's marker appeared there."""
    folder.mkdir()
    code = ("import sys, torch\n"
            "try:\n    torch.load(sys.argv[1], weights_only=False, map_location='cpu')\n"
            "except Exception:\n    pass\n")
    subprocess.run([sys.executable, "-c", code, str(path.resolve())], cwd=folder, capture_output=True, timeout=300)
    return (folder / MARKER).exists()


def test_every_fixture_has_facts():
    assert sorted(p.name for p in FILES) == sorted(FACTS)


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.name)
def test_torch_runs_the_payload(path, tmp_path):
    """The oracle: torch.load(weights_only=False) runs each payload (so a clean verdict on the other reading is
    a miss), and the marker proves it ran in the throwaway folder only."""
    assert torch_runs_payload(path, tmp_path / "sandbox")
    assert not (CONTAINERS / MARKER).exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_scan_flags_it(path):
    """Exit 1: "ambiguous container: torch.load reads X" for the ambiguous classes, "dangerous" for the others;
    the payload torch runs is among the dangerous globals (scan judges the pickle torch unpickles)."""
    p = run("scan", path)
    assert p.returncode == 1, p.stderr
    if FACTS[path.name]["scan"] == "ambiguous":
        assert "ambiguous container: torch.load reads" in p.stderr, p.stderr
    else:
        assert "ambiguous" not in p.stderr and "dangerous" in p.stderr, p.stderr
    p = run("scan", path, "--json")
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert bool(report["container"]["ambiguities"]) == (FACTS[path.name]["scan"] == "ambiguous")
    if FACTS[path.name]["payload"]:
        assert "builtins.exec" in [g["name"] for g in report["globals"] if g["class"] == "dangerous"]
        assert report["verdict"] == "dangerous"
    else:
        assert report["verdict"] == "ambiguous-container"


REWRITES = ["strip", "convert-safetensors", "convert-torch", "transfer-from", "transfer-into"]


@pytest.mark.parametrize("command", REWRITES)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_rewrites_refuse(path, command, tmp_path):
    """Every rewriting command refuses (exit 1, one line, nothing written), whether ckpt could read the file as a
    checkpoint or not."""
    clean = FIXTURES / "sd-proto2.pt"
    out = tmp_path / ("out.safetensors" if command == "convert-safetensors" else "out.pt")
    args = {
        "strip": ["strip", path, out],
        "convert-safetensors": ["convert", path, out],
        "convert-torch": ["convert", path, out],
        "transfer-from": ["transfer", path, clean, out],
        "transfer-into": ["transfer", clean, path, out],
    }[command]
    before = path.read_bytes()
    p = run(*args)
    assert p.returncode == 1, p.stderr
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "refusing to rewrite" in p.stderr and str(path) in p.stderr, p.stderr
    want = "ambiguous container" if FACTS[path.name]["scan"] == "ambiguous" else "builtins.exec"
    assert want in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []
    assert path.read_bytes() == before


def test_case_storage_torch_loads_other_values_and_ckpt_reads_them(tmp_path):
    """archive/DATA/0 beside archive/data/0: torch's lookup ignores case and loads the other record's values
    (no payload here, so weights_only=True loads it in this process). ckpt reads the record torch reads: with
    --allow-unsafe, convert writes torch's values, not those of the record named exactly data/0."""
    path = CONTAINERS / "case-storage.pt"
    key = FACTS[path.name]["storage"]
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    with zipfile.ZipFile(path) as z:
        exact = np.frombuffer(z.read(f"archive/data/{key}"), dtype=np.float32)
    tensor = next(t for t in loaded.values() if t.untyped_storage().nbytes() == exact.nbytes)
    torch_values = np.frombuffer(bytes(tensor.untyped_storage()), dtype=np.float32)
    assert torch_values.tobytes() != exact.tobytes(), "the fixture must make torch load other values"

    out = tmp_path / "out.safetensors"
    assert run("convert", path, out).returncode == 1
    p = run("convert", path, out, "--allow-unsafe")
    assert p.returncode == 0, p.stderr
    ours = load_file(str(out))
    for name, t in loaded.items():
        assert ours[name].tobytes() == t.numpy().tobytes(), name


def test_bad_crc_scan_judges_the_pickle_but_readers_refuse():
    """A wrong CRC does not stop torch, so it does not stop the scan; commands that read the file as a checkpoint
    still refuse it as damaged (exit 2)."""
    path = CONTAINERS / "bad-crc-data-pkl.pt"
    assert run("scan", path).returncode == 1
    p = run("info", path)
    assert p.returncode == 2 and "crc-32" in p.stderr, p.stderr


def clean_files(tmp_path):
    files = sorted(FIXTURES.glob("*.pt")) + sorted(p for p in (FIXTURES / "legacy").iterdir() if p.suffix != ".json")
    # A TorchScript archive torch writes (in another interpreter: scripting here would leave nn.Linear compiled in
    # torch.jit's type cache, which changes what test_torchscript.py's archives hold), and a safetensors file.
    ts = tmp_path / "scripted.pt"
    code = ("import sys, torch\n"
            "m = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()))\n"
            "torch.jit.save(m, sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, str(ts)], check=True, capture_output=True, timeout=300)
    st = tmp_path / "w.safetensors"
    assert run("convert", FIXTURES / "sd-proto2.pt", st).returncode == 0
    return files + [ts, st]


def test_clean_files_are_not_ambiguous(tmp_path):
    """No false positive: every clean fixture, a TorchScript archive and a safetensors file have one reading."""
    for path in clean_files(tmp_path):
        p = run("scan", path, "--json")
        assert p.returncode in (0, 1, 2), p.stderr
        if p.returncode == 2:
            continue  # a file scan cannot read is reported as such, not as ambiguous
        report = json.loads(p.stdout)
        assert report["container"]["ambiguities"] == [], (path, report["container"])
        assert "ambiguous" not in p.stderr, (path, p.stderr)


def test_pickle_then_zip_scan_reads_byte_zero():
    """Before this check, a zip reader found the clean archive after the payload; scan must judge the pickle
    stream torch unpickles from byte 0."""
    report = json.loads(run("scan", CONTAINERS / "pickle-then-zip.pt", "--json").stdout)
    assert report["format"] == "pickle stream"
    assert report["container"]["torch_reads"] == "the pickle stream at byte 0"


def load_generator():
    import importlib.util
    spec = importlib.util.spec_from_file_location("mcf", FIXTURES.parent / "scripts" / "make-container-fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("seed", range(12))
def test_ckpt_picks_the_record_torch_picks_among_names_alike(seed, tmp_path):
    """ckpt's record lookup repeats miniz's heap sort and binary search (MinizLookup): among up to six spellings of
    data/0 (and data.pkl) in a shuffled central directory, with other records around them, ckpt reads the values
    torch loads (no payload: weights_only=True in this process)."""
    import random
    gen = load_generator()
    rng = random.Random(seed)
    pkl, storages = gen.clean_records()
    key = sorted(storages, key=int)[0]
    size = len(storages[key])
    spellings = rng.sample(["data", "DATA", "Data", "dAta", "daTa", "datA"], rng.randint(2, 6))
    records = [(f"archive/{s}/{key}", bytes(rng.randrange(256) for _ in range(size // 4 * 4))) for s in spellings]
    records += [(f"archive/data/{k}", v) for k, v in storages.items() if k != key]
    records += [("archive/byteorder", b"little"), ("archive/version", b"3\n"), ("archive/zz/extra", b"x"),
                ("archive/aa", b"y")]
    rng.shuffle(records)
    records.insert(0, ("archive/data.pkl", pkl))  # the root comes from the first record
    z = gen.ZipBuilder()
    for n, d in records:
        z.add(n, d)
    path = tmp_path / "alike.pt"
    path.write_bytes(z.finish())
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    assert run("scan", path).returncode == 1
    out = tmp_path / "out.safetensors"
    p = run("convert", path, out, "--allow-unsafe")
    assert p.returncode == 0, p.stderr
    ours = load_file(str(out))
    for name, t in loaded.items():
        assert ours[name].tobytes() == t.numpy().tobytes(), (name, spellings)


def test_an_ambiguous_shard_makes_the_sharded_checkpoint_ambiguous(tmp_path):
    """A sharded checkpoint's index is read through its shards: a shard whose container is ambiguous is reported
    (exit 1, naming the shard) and the index is refused by rewrites."""
    import shutil
    shutil.copy(CONTAINERS / "case-storage.pt", tmp_path / "shard-1.bin")
    names = list(torch.load(CONTAINERS / "case-storage.pt", weights_only=True))
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {n: "shard-1.bin" for n in names}}))
    p = run("scan", index)
    assert p.returncode == 1 and "ambiguous container" in p.stderr and "shard shard-1.bin" in p.stderr, p.stderr
    p = run("strip", index, tmp_path / "out.pt")
    assert p.returncode == 1 and "ambiguous container" in p.stderr, p.stderr
    assert not (tmp_path / "out.pt").exists()


# Ambiguities ckpt can read as a checkpoint (past --allow-unsafe); the others are also damage (a duplicate name, a
# disagreeing local header, a wrong CRC) or not a checkpoint at byte 0 (a bare pickle, a legacy stream cut by the
# zip), and stay unreadable (exit 2).
READABLE = {"case-data-pkl.pt", "case-storage.pt", "legacy-tar-payload.pt", "tar-name-is-legacy-checkpoint.pt",
            "tar-named-pk-then-zip.pt", "tar-named-pk0304-zip.pt", "two-end-records.pt"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_allow_unsafe_output_keeps_what_torch_reads(path, tmp_path):
    """Rewriting never launders: with --allow-unsafe the output is what ckpt read, which is torch's reading, payload
    included (torch.load of the output runs it too), written as a plain torch zip with one reading."""
    out = tmp_path / "out.pt"
    p = run("strip", path, out, "--allow-unsafe")
    if path.name not in READABLE:
        assert p.returncode == 2 and not out.exists(), p.stderr
        return
    assert p.returncode == 0, p.stderr
    report = json.loads(run("scan", out, "--json").stdout)
    assert report["container"]["ambiguities"] == []
    if FACTS[path.name]["payload"]:
        assert report["verdict"] == "dangerous"
        assert torch_runs_payload(out, tmp_path / "sandbox")


def test_a_torch_zip_named_safetensors_is_ambiguous(tmp_path):
    """torch.load (2.13) reads a path ending in .safetensors with safetensors, whatever its bytes: a torch zip so
    named is not what torch.load reads, while ckpt (and readers that go by content) read the zip."""
    path = tmp_path / "model.safetensors"
    path.write_bytes((FIXTURES / "sd-proto2.pt").read_bytes())
    with pytest.raises(Exception, match="(?i)header|safetensor"):
        torch.load(path, weights_only=True)
    p = run("scan", path)
    assert p.returncode == 1 and "ends in .safetensors" in p.stderr, p.stderr
    p = run("convert", path, tmp_path / "o.safetensors")
    assert p.returncode == 1 and "ambiguous container" in p.stderr, p.stderr
