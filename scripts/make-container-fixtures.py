#!/usr/bin/env python3
"""Write fixtures/containers/: files where the container torch.load picks differs from another reading of the
same bytes (a pickle stream, a tar, a zip, one of two records), one file per class, and facts.json.

    .venv/bin/python scripts/make-container-fixtures.py

How torch 2.13 picks what it reads (torch/serialization.py `load`, `_legacy_load`; caffe2/serialize/
inline_container.cc over third_party/miniz):
  - a zip only when the file starts with the local-header magic PK\\x03\\x04 (`_is_zipfile`); then a zip with a
    `constants.pkl` record is TorchScript;
  - otherwise `legacy_load` tries `tarfile.open` first (only when the file is read from offset 0);
  - otherwise the pickle stream from byte 0: the first `pickle.load` runs before the magic number is checked;
  - in a zip, miniz finds the last end-of-central-directory signature with 22 bytes after it (searching back
    from the end), looks a record up by name without regard to ASCII case (binary search over names sorted by a
    heap sort), finds the data through the local header's own name and extra lengths (the local name is never
    compared with the central one), and does not check CRCs (torch builds miniz with
    MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS).

Every zip here is assembled byte by byte (`ZipBuilder`), so that offsets, names and CRCs are exactly what each
class needs. Which of two records torch picks is asked of torch's own zip reader
(`torch._C.PyTorchFileReader.get_record`, which returns bytes and unpickles nothing).

The payload is inert bytes: a pickle that calls `builtins.exec` on a one-line program creating the file
`ckpt-container-marker` in the current folder; nothing else. Nothing here is ever unpickled: the tests run
`torch.load(weights_only=False)` only in a throwaway subprocess whose working folder is a fresh temp folder.
Deterministic: rerunning writes the same bytes.
"""

import importlib.util
import json
import os
import pickle
import struct
import sys
import tarfile
import zipfile
import zlib

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "fixtures", "containers")

_spec = importlib.util.spec_from_file_location("make_bad_fixtures", os.path.join(HERE, "make-bad-fixtures.py"))
bad = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad)  # defines helpers only (its main is guarded)

MARKER = "ckpt-container-marker"
# builtins.exec("open('ckpt-container-marker', 'w').close()") as protocol-2 opcodes: GLOBAL, BINUNICODE,
# TUPLE1, REDUCE, STOP. The call returns None, so torch.load fails right after it; the marker says it ran.
PROGRAM = f"open('{MARKER}', 'w').close()".encode()
PAYLOAD = b"\x80\x02cbuiltins\nexec\nX" + struct.pack("<I", len(PROGRAM)) + PROGRAM + b"\x85R."

# torch.save's legacy magic number (torch/serialization.py MAGIC_NUMBER) and protocol version, as protocol-2
# pickles: LONG1 of 10 bytes, and BININT2 1001.
MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
PROTOCOL = b"\x80\x02M\xe9\x03."
EMPTY_DICT = b"\x80\x02}."
EMPTY_LIST = b"\x80\x02]."


def clean_records():
    """data.pkl and the storages torch.save writes for a small state dict (torch's own writer; read back as
    bytes with zipfile, never unpickled): make-bad-fixtures.py's torch_records."""
    torch.manual_seed(0)
    return bad.torch_records(nn.Sequential(nn.Linear(3, 2)).state_dict())


# ---- zip, byte by byte (APPNOTE.TXT 4.3.7 local header, 4.3.12 central header, 4.3.16 end record) ---------


class ZipBuilder:
    """Stored records laid out from `base` (the offset the first local header will have in the final file)."""

    def __init__(self, base=0):
        self.base = base
        self.body = bytearray()
        self.central = []

    def add(self, name, data, local_name=None, crc=None, in_directory=True):
        """One stored record. `local_name`: another name in the local header than in the central directory;
        `crc`: the CRC-32 to declare (default: the right one); `in_directory=False`: a local header no central
        entry points to."""
        name = name.encode() if isinstance(name, str) else name
        lname = name if local_name is None else local_name.encode()
        crc = zlib.crc32(data) if crc is None else crc
        offset = self.base + len(self.body)
        self.body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, len(data), len(data),
                                 len(lname), 0) + lname + data
        if in_directory:
            self.central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21, crc,
                                            len(data), len(data), len(name), 0, 0, 0, 0, 0, offset) + name)

    def directory(self, at, comment_length=0):
        """The central directory and end record, to be placed at file offset `at`."""
        cd = b"".join(self.central)
        eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(self.central), len(self.central), len(cd), at,
                           comment_length)
        return cd + eocd

    def finish(self):
        return bytes(self.body) + self.directory(self.base + len(self.body))


def torch_zip(pkl, storages, base=0, root="archive"):
    """A zip torch.load reads: version, data.pkl, byteorder, the storages; `base` bytes will come before it."""
    z = ZipBuilder(base)
    z.add(f"{root}/data.pkl", pkl)
    z.add(f"{root}/byteorder", b"little")
    for key in sorted(storages, key=int):
        z.add(f"{root}/data/{key}", storages[key])
    z.add(f"{root}/version", b"3\n")
    return z


def torch_pick(data, name):
    """The bytes torch's zip reader returns for record `name` of the zip `data` (nothing is unpickled)."""
    path = os.path.join(OUT, ".probe.zip")
    with open(path, "wb") as f:
        f.write(data)
    try:
        return bytes(torch._C.PyTorchFileReader(path).get_record(name))
    finally:
        os.remove(path)


# ---- torch 0.1.x tar (torch/serialization.py legacy_load) ------------------------------------------------


def tar_member(name, data):
    """One ustar member, name given as bytes (tarfile decodes it with surrogateescape, so any byte but NUL)."""
    info = tarfile.TarInfo("x")
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    header[0:100] = name.ljust(100, b"\0")
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % 512)


def legacy_tar(pickle_member, first=None):
    """A tar legacy_load reads: no storages (a pickled 0 and an empty view list), no tensors, and
    `pickle_member` as the object. `first`: a (name, data) member before them (legacy_load looks members up by
    name, so it does not matter to torch)."""
    zero = b"\x80\x02K\x00."
    members = [first] if first else []
    members += [(b"storages", zero + EMPTY_LIST), (b"tensors", zero), (b"pickle", pickle_member)]
    body = b"".join(tar_member(n, d) for n, d in members)
    return body + b"\0" * 1024  # two zero blocks end the archive


# ---- the fixtures --------------------------------------------------------------------------------------


def make():
    os.makedirs(OUT, exist_ok=True)
    pkl, storages = clean_records()
    facts = {}

    def put(name, data, klass, torch_reads, other, expect, **extra):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        facts[name] = dict(container_class=klass, torch_reads=torch_reads, other_reading=other, scan=expect,
                           **extra)

    # 1. A pickle followed by a zip: torch unpickles from byte 0 (no PK\x03\x04 there); a zip reader finds
    #    the clean archive by its end record.
    put("pickle-then-zip.pt", PAYLOAD + torch_zip(pkl, storages, base=len(PAYLOAD)).finish(),
        "data before the zip", "the pickle stream at byte 0 (the payload)", "the clean zip after it",
        "ambiguous", payload=True)

    # 2. The same behind a legacy header: the magic number, the protocol version, then sys_info is the payload.
    head = MAGIC + PROTOCOL + PAYLOAD
    put("legacy-then-zip.pt", head + torch_zip(pkl, storages, base=len(head)).finish(),
        "data before the zip", "the legacy pickle stream at byte 0 (its sys_info is the payload)",
        "the clean zip after it", "ambiguous", payload=True)

    # 3. A tar whose first member is named PK... (not PK\x03\x04): torch reads the tar (its pickle member is the
    #    payload); a reader that calls "PK" a zip finds the clean zip appended after the tar.
    tar = legacy_tar(PAYLOAD, first=(b"PK-readme", b"hello\n"))
    put("tar-named-pk-then-zip.pt", tar + torch_zip(pkl, storages, base=len(tar)).finish(),
        "a tar that is also a zip", "the tar (its pickle member is the payload)", "the clean zip after it",
        "ambiguous", payload=True)

    # 4. A tar whose first member's name starts with PK\x03\x04: torch reads the zip after it (its data.pkl is the
    #    payload); a tar reader reads a clean legacy tar.
    tar = legacy_tar(EMPTY_DICT, first=(b"PK\x03\x04-readme", b"hello\n"))
    put("tar-named-pk0304-zip.pt", tar + torch_zip(PAYLOAD, {}, base=len(tar)).finish(),
        "a tar that is also a zip", "the zip (its data.pkl is the payload)", "the clean legacy tar",
        "ambiguous", payload=True)

    # 5. A tar whose first member's name is a whole clean legacy checkpoint (magic, protocol, sys_info, an empty
    #    dict, no storage keys; no NUL byte, so tarfile keeps it as the name): a pickle-stream reader from byte 0
    #    reads an empty checkpoint; torch reads the tar, whose pickle member is the payload.
    name = MAGIC + PROTOCOL + EMPTY_DICT + EMPTY_DICT + EMPTY_LIST
    assert len(name) <= 100 and b"\0" not in name
    put("tar-name-is-legacy-checkpoint.pt", legacy_tar(PAYLOAD, first=(name, b"")),
        "a tar that is also a pickle stream", "the tar (its pickle member is the payload)",
        "a clean legacy checkpoint in the first member's name", "ambiguous", payload=True)

    # 6. A plain torch 0.1.x tar whose pickle member is the payload: not ambiguous, dangerous.
    put("legacy-tar-payload.pt", legacy_tar(PAYLOAD), "plain legacy tar", "the tar (its pickle member is the payload)",
        None, "dangerous", payload=True)

    # 7. archive/DATA.PKL beside archive/data.pkl: torch's lookup ignores case and picks one of them (by miniz's
    #    heap sort and binary search); that one gets the payload, the other the clean pickle.
    def case_pair(a, b):
        z = ZipBuilder()
        z.add("archive/data.pkl", a)
        z.add("archive/DATA.PKL", b)
        z.add("archive/byteorder", b"little")
        for key in sorted(storages, key=int):
            z.add(f"archive/data/{key}", storages[key])
        z.add("archive/version", b"3\n")
        return z.finish()
    probe = case_pair(b"lower", b"upper")
    picked = torch_pick(probe, "data.pkl")
    data = case_pair(PAYLOAD, pkl) if picked == b"lower" else case_pair(pkl, PAYLOAD)
    put("case-data-pkl.pt", data, "names that differ only in case",
        f"archive/{'data.pkl' if picked == b'lower' else 'DATA.PKL'} (the payload)",
        f"archive/{'DATA.PKL' if picked == b'lower' else 'data.pkl'} (clean)", "ambiguous", payload=True)

    # 8. archive/DATA/0 beside archive/data/0: a clean state dict, but torch loads its first storage from the
    #    record its lookup picks, whose bytes differ from the one named exactly data/0.
    key = sorted(storages, key=int)[0]
    other = bytes(storages[key][::-1])  # the same length, other values
    def storage_pair(first_lower):
        z = ZipBuilder()
        z.add("archive/data.pkl", pkl)
        z.add("archive/byteorder", b"little")
        pair = [(f"archive/data/{key}", storages[key]), (f"archive/DATA/{key}", other)]
        for n, d in (pair if first_lower else pair[::-1]):
            z.add(n, d)
        for k in sorted(storages, key=int)[1:]:
            z.add(f"archive/data/{k}", storages[k])
        z.add("archive/version", b"3\n")
        return z.finish()
    for first_lower in (True, False):
        data = storage_pair(first_lower)
        if torch_pick(data, f"data/{key}") == other:
            break
    else:
        raise SystemExit("torch's lookup picks archive/data/0 in both orders; cannot make the tensor fixture")
    put("case-storage.pt", data, "names that differ only in case", f"archive/DATA/{key} (other tensor values)",
        f"archive/data/{key}", "ambiguous", payload=False, storage=key)

    # 9. Two end records: the clean zip A ends with an end record whose comment runs to the end of the file (so a
    #    reader that wants the comment to fit takes it); zip B's central directory and end record follow, B's
    #    comment length running past the end. miniz takes the last signature with 22 bytes after it: B, whose
    #    data.pkl is the payload.
    a = ZipBuilder()
    a.add("archive/data.pkl", pkl)
    for k in sorted(storages, key=int):
        a.add(f"archive/data/{k}", storages[k])
    a.add("archive/version", b"3\n")
    b = ZipBuilder(base=len(a.body))
    b.add("archive/data.pkl", PAYLOAD)
    b.add("archive/version", b"3\n")
    body = bytes(a.body) + bytes(b.body)
    cd_a = a.directory(len(body))
    tail_b = b.directory(len(body) + len(cd_a), comment_length=7)
    cd_a = a.directory(len(body), comment_length=len(tail_b))
    data = body + cd_a + tail_b
    assert torch_pick(data, "data.pkl") == PAYLOAD
    put("two-end-records.pt", data, "two end-of-central-directory records",
        "the last end record's archive (its data.pkl is the payload)", "the first end record's clean archive",
        "ambiguous", payload=True)

    # 10. The local header's name differs from the central directory's: a local header named archive/data.pkl
    #     holds the clean pickle but no central entry points to it; the central entry archive/data.pkl points to
    #     a local header named archive/xxxx.pkl holding the payload. torch follows the central directory.
    z = ZipBuilder()
    z.add("archive/data.pkl", pkl, in_directory=False)
    z.add("archive/data.pkl", PAYLOAD, local_name="archive/xxxx.pkl")
    z.add("archive/byteorder", b"little")
    for k in sorted(storages, key=int):
        z.add(f"archive/data/{k}", storages[k])
    z.add("archive/version", b"3\n")
    data = z.finish()
    assert torch_pick(data, "data.pkl") == PAYLOAD
    put("local-name-differs.pt", data, "local and central names differ",
        "the central entry's data (the payload, under local name archive/xxxx.pkl)",
        "the local header named archive/data.pkl (clean)", "ambiguous", payload=True)

    # 11. Two records named archive/data.pkl: torch's lookup picks one; that one gets the payload.
    def dup(first, second):
        z = ZipBuilder()
        z.add("archive/data.pkl", first)
        z.add("archive/byteorder", b"little")
        for k in sorted(storages, key=int):
            z.add(f"archive/data/{k}", storages[k])
        z.add("archive/data.pkl", second)
        z.add("archive/version", b"3\n")
        return z.finish()
    picked = torch_pick(dup(b"first", b"secnd"), "data.pkl")
    data = dup(PAYLOAD, pkl) if picked == b"first" else dup(pkl, PAYLOAD)
    put("duplicate-data-pkl.pt", data, "duplicate names", f"the {picked.decode()} archive/data.pkl (the payload)",
        "the other archive/data.pkl (clean)", "ambiguous", payload=True)

    # 12. data.pkl with a wrong CRC-32: torch does not check CRCs and runs it. Not ambiguous: dangerous.
    z = ZipBuilder()
    z.add("archive/data.pkl", PAYLOAD, crc=zlib.crc32(PAYLOAD) ^ 0xFFFF)
    z.add("archive/byteorder", b"little")
    z.add("archive/version", b"3\n")
    put("bad-crc-data-pkl.pt", z.finish(), "wrong CRC", "data.pkl as it is (the payload)", None, "dangerous",
        payload=True)

    with open(os.path.join(OUT, "facts.json"), "w") as f:
        json.dump(facts, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(facts)} fixtures to {OUT}")


if __name__ == "__main__":
    make()
