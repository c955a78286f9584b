"""Every bad input gets exit 2 and one line naming the file: nothing on stdout, nothing written, the input
unchanged, no crash. One fixture per defect in fixtures/bad/ (scripts/make-bad-fixtures.py); torch is the
reference for which of them are defects (fixtures/bad/facts.json, rechecked here)."""
import hashlib
import json
import resource

import pytest
import torch

from conftest import FIXTURES, assert_clean_failure, run

BAD = FIXTURES / "bad"
FACTS = json.loads((BAD / "facts.json").read_text())
FILES = sorted(BAD.glob("*.pt"))

# The defect is in storage bytes, which only commands that copy them read (info, keys and scan read the
# pickle and the directory, and stay exit 0).
STORAGE_BYTES_ONLY = {"crc-mismatch-storage.pt"}

# What the one line must say, so that the failure is the defect and not something incidental.
SAYS = {
    "absolute-record-name.pt": "unsafe",
    "central-directory-disagrees-with-local-header.pt": "damaged zip",
    "crc-mismatch-data-pkl.pt": "crc-32",
    "crc-mismatch-storage.pt": "crc-32",
    "deflated-declared-size-larger-than-real.pt": "truncated",
    "deflated-declared-size-over-limit.pt": "limit",
    "deflated-real-size-larger-than-declared.pt": "more than its declared",
    "duplicate-record.pt": "more than once",
    "empty-file.pt": "not a zip",
    "legacy-truncated-storage.pt": "cut short",
    "marks-100000-open.pt": "MARK",
    "memo-bomb.pt": "memo abuse",
    "memo-get-missing.pt": "memo entry 7",
    "missing-data-pkl.pt": "data.pkl is missing",
    "missing-storage-record.pt": "data/3 is missing",
    "negative-storage-offset.pt": "negative storage offset",
    "negative-stride.pt": "negative stride",
    "nesting-100000-deep.pt": "nested more than",
    "not-a-checkpoint.pt": "not a zip",
    "path-traversal-record-name.pt": "unsafe",
    "persistent-id-not-a-storage.pt": "not a torch storage",
    "pickle-without-stop.pt": "ends early",
    "shape-numel-overflow.pt": "overflows",
    "stack-underflow.pt": "stack is empty",
    "storage-record-shorter-than-declared.pt": "record holds 16 bytes",
    "storage-type-does-not-exist.pt": "Float7Storage",
    "stride-count-differs-from-shape.pt": "2 dims but 1 strides",
    "tensor-past-storage.pt": "reaches byte 24",
    "truncated-central-directory.pt": "cut short",
    "truncated-storage.pt": "cut short",
    "unknown-opcode.pt": "unknown pickle opcode 0xff",
}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_bad_fixture_is_in_the_table():
    assert sorted(p.name for p in FILES) == sorted(SAYS) == sorted(FACTS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_torch_agrees_it_is_a_defect(path):
    """fixtures/bad/facts.json says whether torch.load(weights_only=True) refuses the file; check it still does."""
    try:
        torch.load(path, weights_only=True, map_location="cpu")
        loads = True
    except Exception:
        loads = False
    assert loads == FACTS[path.name]["torch_loads"]


@pytest.mark.parametrize("command", ["info", "keys", "scan"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_readers_answer_with_one_line(path, command):
    before = sha(path)
    p = run(command, path)
    if path.name in STORAGE_BYTES_ONLY:
        assert p.returncode == 0, p.stderr
    else:
        assert_clean_failure(p, path)
        assert SAYS[path.name] in p.stderr, p.stderr
    assert sha(path) == before


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_strip_writes_nothing(path, tmp_path):
    before = sha(path)
    out = tmp_path / "out.pt"
    p = run("strip", path, out)
    assert_clean_failure(p, path)
    assert SAYS[path.name] in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == [], "strip left files behind"
    assert sha(path) == before


def test_huge_declared_size_does_not_allocate_it(tmp_path):
    """data.pkl declares 1 GiB (deflated, really 852 bytes): the reader must not reserve the claim. Under a
    512 MiB address-space limit, reserving it would crash instead of reporting the truncation."""
    import subprocess
    from conftest import CKPT

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))

    path = BAD / "deflated-declared-size-larger-than-real.pt"
    p = subprocess.run([CKPT, "info", str(path)], capture_output=True, text=True, preexec_fn=limit, timeout=60)
    assert_clean_failure(p, path)
    assert "truncated" in p.stderr


def test_cut_at_sample_offsets(tmp_path):
    """The in-process Swift test cuts sd-proto2.pt at every offset; here the CLI answers a sample of them."""
    data = (FIXTURES / "sd-proto2.pt").read_bytes()
    for n in list(range(0, len(data), 173)) + [len(data) - 1, len(data) - 22]:
        path = tmp_path / f"cut-{n}.pt"
        path.write_bytes(data[:n])
        assert_clean_failure(run("info", path), path)
        out = tmp_path / "out.pt"
        assert_clean_failure(run("strip", path, out), path)
        assert not out.exists()
