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

# The defect is in stored (uncompressed) storage bytes, which only commands that copy them read (info, keys and
# scan read the pickle and the directory, and stay exit 0). A compressed record is inflated and checked at open.
STORAGE_BYTES_ONLY = {"crc-mismatch-storage.pt"}
# Defects that also give the file two readings (torch's zip reader takes one of two records named alike, or
# follows the central directory past a local header that names another record): `scan` reports the ambiguous
# container and `strip` refuses it, both with exit 1 (Tests/interop/test_containers_as_torch_reads.py).
AMBIGUOUS = {"central-directory-disagrees-with-local-header.pt", "duplicate-record.pt"}

# What the one line must say, so that the failure is the defect and not something incidental.
SAYS = {
    "absolute-record-name.pt": "unsafe",
    "central-directory-disagrees-with-local-header.pt": "damaged zip",
    "crc-mismatch-data-pkl.pt": "crc-32",
    "crc-mismatch-storage.pt": "crc-32",
    "deflate-ratio-over-1032.pt": "more than deflate's 1032 to 1",
    "deflated-declared-size-larger-than-real.pt": "more than deflate's 1032 to 1",
    "deflated-declared-size-over-limit.pt": "more than deflate's 1032 to 1",
    "deflated-real-size-larger-than-declared.pt": "not the 852 bytes the archive declares",
    "deflated-storage-crc-mismatch.pt": "crc-32",
    "deflated-storage-inflates-long.pt": "not the 432 bytes the archive declares",
    "deflated-storage-inflates-short.pt": "inflates to 200 bytes, not the 432",
    "duplicate-record.pt": "more than once",
    "empty-file.pt": "empty file",
    "legacy-truncated-storage.pt": "cut short",
    "marks-100000-open.pt": "MARK",
    "memo-bomb.pt": "memo abuse",
    "memo-get-missing.pt": "memo entry 7",
    "missing-data-pkl.pt": "data.pkl is missing",
    "missing-storage-record.pt": "data/3 is missing",
    "negative-storage-offset.pt": "negative storage offset",
    "negative-stride.pt": "negative stride",
    "nesting-100000-deep.pt": "nested more than",
    "not-a-checkpoint.pt": "a text file, not a checkpoint",
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
    elif command == "scan" and path.name in AMBIGUOUS:
        assert p.returncode == 1 and "ambiguous container" in p.stderr, p.stderr
    else:
        assert_clean_failure(p, path)
        assert SAYS[path.name] in p.stderr, p.stderr
    assert sha(path) == before


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_strip_writes_nothing(path, tmp_path):
    before = sha(path)
    out = tmp_path / "out.pt"
    p = run("strip", path, out)
    if path.name in AMBIGUOUS:
        assert p.returncode == 1 and "ambiguous container" in p.stderr, p.stderr
    else:
        assert_clean_failure(p, path)
        assert SAYS[path.name] in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == [], "strip left files behind"
    assert sha(path) == before


def test_huge_declared_size_does_not_allocate_it(tmp_path):
    """data.pkl declares 1 GiB (deflated, really 852 bytes): the reader must not reserve the claim. Under a
    512 MiB address-space limit, reserving it would crash instead of reporting the impossible size."""
    import subprocess
    from conftest import CKPT

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))

    path = BAD / "deflated-declared-size-larger-than-real.pt"
    p = subprocess.run([CKPT, "info", str(path)], capture_output=True, text=True, preexec_fn=limit, timeout=60)
    assert_clean_failure(p, path)
    assert "1032 to 1" in p.stderr


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


def _storage_local_header_defects(tmp_path):
    """Copies of resnet-sd.pt whose data/0 local header disagrees with the central directory, one per field
    ckpt compares (what libzip's ZIP_CHECKCONS compares): name, method, CRC-32 and size."""
    import zipfile

    src = FIXTURES / "resnet-sd.pt"
    raw = src.read_bytes()
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    h = info.header_offset
    assert raw[h:h + 4] == b"PK\x03\x04"
    out = {}
    for what, at in [("name", h + 30), ("method", h + 8), ("crc", h + 14), ("size", h + 22)]:
        b = bytearray(raw)
        b[at] ^= 0x01
        p = tmp_path / f"local-header-{what}.pt"
        p.write_bytes(bytes(b))
        out[what] = p
    return out


def libzip_checkcons_refuses(path):
    """The reference for local-header consistency: libzip's zip_open with ZIP_CHECKCONS (what ckpt's reader
    replaced), called through ctypes. torch does not compare local headers at all (miniz reads only the name and
    extra lengths from them), so it is no oracle here."""
    import ctypes
    import ctypes.util

    lib = ctypes.CDLL(ctypes.util.find_library("zip") or "libzip.so.4")
    lib.zip_open.restype = ctypes.c_void_p
    lib.zip_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.zip_discard.argtypes = [ctypes.c_void_p]
    err = ctypes.c_int(0)
    za = lib.zip_open(str(path).encode(), 4 | 16, ctypes.byref(err))  # ZIP_CHECKCONS | ZIP_RDONLY
    if za:
        lib.zip_discard(za)
        return False
    return True


def test_storage_local_header_defects_are_found_when_the_bytes_are_read(tmp_path):
    """A storage's local header is checked when its bytes are first read: strip (and every command that copies
    storages) answers with one line naming the damage and writes nothing; keys and info, which read no storage
    bytes, still list the file (as for a storage whose bytes fail their CRC). libzip's ZIP_CHECKCONS refuses every
    copy, and accepts the original."""
    assert not libzip_checkcons_refuses(FIXTURES / "resnet-sd.pt")
    for what, path in _storage_local_header_defects(tmp_path).items():
        before = sha(path)
        assert libzip_checkcons_refuses(path), what
        out = tmp_path / "out.pt"
        # The disagreement also gives the record two readings: refused as an ambiguous container (exit 1) ...
        p = run("strip", path, out)
        assert p.returncode == 1 and "ambiguous container" in p.stderr and "data/0" in p.stderr, (what, p.stderr)
        assert not out.exists()
        # ... and, past that check, as a damaged zip when the storage's bytes are read.
        p = run("strip", path, out, "--allow-unsafe")
        assert_clean_failure(p, path)
        assert "damaged zip" in p.stderr and "data/0" in p.stderr, (what, p.stderr)
        assert not out.exists()
        assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == [], "strip left a temp file"
        assert run("keys", path).returncode == 0, what
        assert sha(path) == before


def test_a_bad_tensor_no_key_reaches_is_still_refused(tmp_path):
    """Unpickling runs every opcode, so torch.load rebuilds (and refuses) a bad tensor even when the pickle pops it
    and nothing refers to it. ckpt checks every tensor the pickle builds, reachable from the root or not."""
    import collections
    import io
    import pickle
    import struct

    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Tensor:
        def __init__(self, storage, offset, shape, stride):
            self.args = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None

    def body(obj):
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(obj)
        p = buf.getvalue()
        assert p[:2] == b"\x80\x02" and p[-1:] == b"."
        return p[2:-1]

    storage = Storage("0", 4)
    bad = body(Tensor(storage, 3, [4], [-1]))  # negative stride
    good = body(collections.OrderedDict(w=Tensor(storage, 0, [4], [1])))
    data = struct.pack("<4f", 1, 2, 3, 4)

    def write(path, pkl):
        w = torch._C.PyTorchFileWriter(str(path), True, 64)
        w.write_record("data.pkl", pkl, len(pkl))
        w.write_record("byteorder", "little", 6)
        w.write_record("data/0", data, len(data))
        w.write_end_of_file()
        del w

    ok, popped = tmp_path / "ok.pt", tmp_path / "popped.pt"
    write(ok, b"\x80\x02" + good + b".")
    write(popped, b"\x80\x02" + bad + b"0" + good + b".")  # b"0" is POP: the bad tensor is dropped
    assert torch.load(ok, weights_only=True)["w"].tolist() == [1, 2, 3, 4]
    with pytest.raises(Exception):
        torch.load(popped, weights_only=True)
    assert run("keys", ok).returncode == 0
    for command in ("keys", "info"):
        p = run(command, popped)
        assert_clean_failure(p, popped)
        assert "negative stride" in p.stderr, p.stderr
    out = tmp_path / "out.pt"
    assert_clean_failure(run("strip", popped, out), popped)
    assert not out.exists()


DEFLATED_STORAGE_LIES = ["deflate-ratio-over-1032.pt", "deflated-storage-crc-mismatch.pt",
                         "deflated-storage-inflates-long.pt", "deflated-storage-inflates-short.pt"]


@pytest.mark.parametrize("name", DEFLATED_STORAGE_LIES)
def test_deflated_storage_that_lies_is_refused_at_open(name, tmp_path):
    """A deflated storage record whose declared size is impossible (over deflate's 1032:1) or whose inflated bytes
    differ from the declared size or CRC is refused by every command that lists or reads it, with one line naming
    the record, before anything is written. keys and info read no storage bytes of a stored record; a compressed
    one is inflated at open. torch agrees for the impossible and short records (facts.json) and loads the others
    (it stops at the declared size and does not check CRCs)."""
    path = BAD / name
    for command in ("keys", "info", "layers"):
        p = run(command, path)
        assert_clean_failure(p, path)
        assert "'pt/data/0'" in p.stderr, p.stderr
    out = tmp_path / "out.pt"
    for args in (("strip", path, out), ("convert", path, tmp_path / "out.safetensors"),
                 ("diff", path, FIXTURES / "sd-proto2.pt"), ("transfer", FIXTURES / "sd-proto2.pt", path, out)):
        p = run(*args)
        assert_clean_failure(p, path)
        assert "'pt/data/0'" in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []
