"""Scale paths of ckpt strip against torch: more than 65,535 zip records (zip64 record count), and the progress
line (only on a terminal, never with --quiet). The > 4 GiB record path is checked end to end by scripts/bench."""
import os
import pty
import shutil
import subprocess
import tempfile
import zipfile

import pytest
import torch

from conftest import CKPT, run

N = 70_000


@pytest.fixture(scope="module")
def many_tensors(tmp_path_factory):
    """torch.save of a dict of 70,000 tiny tensors, each its own storage: 70,005 zip records."""
    path = tmp_path_factory.mktemp("many") / "many.pt"
    values = torch.arange(2 * N, dtype=torch.float32)
    torch.save({f"layer.{i}.weight": values[2 * i:2 * i + 2].clone() for i in range(N)}, path)
    return path


def test_strip_with_more_than_65535_records_loads_in_torch(many_tensors, tmp_path):
    out = tmp_path / "many-stripped.pt"
    run("strip", many_tensors, out, check=0)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
    assert len(names) > 65_535 and sum(n.startswith("many-stripped/data/") for n in names) == N
    loaded = torch.load(out, weights_only=False)  # the C unpickler: 70,000 tensors in seconds, not a minute
    assert list(loaded) == [f"layer.{i}.weight" for i in range(N)]
    assert torch.equal(torch.cat(list(loaded.values())), torch.arange(2 * N, dtype=torch.float32))


def run_on_terminal(*args, env_extra=None):
    """Runs ckpt with stderr on a pseudo-terminal (stdout piped); returns (exit code, what stderr showed)."""
    leader, follower = pty.openpty()
    env = dict(os.environ, **(env_extra or {}))
    p = subprocess.Popen([CKPT, *map(str, args)], stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        shown += chunk
    p.stdout.read()
    code = p.wait()
    os.close(leader)
    return code, shown.decode(errors="replace")


SMALL = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "yolov5s-train.pt")


def test_progress_shows_on_a_terminal_and_is_erased(tmp_path):
    code, shown = run_on_terminal("strip", SMALL, tmp_path / "a.pt", env_extra={"CKPT_PROGRESS_DELAY": "0"})
    assert code == 0
    assert "\rstrip: " in shown and " of " in shown and "%)" in shown, repr(shown)
    assert shown.endswith("\r\x1b[K"), repr(shown)  # the line is gone before the summary is printed


def test_quiet_silences_progress_on_a_terminal(tmp_path):
    code, shown = run_on_terminal("strip", "--quiet", SMALL, tmp_path / "b.pt", env_extra={"CKPT_PROGRESS_DELAY": "0"})
    assert code == 0 and shown == "", repr(shown)


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path):
    env = dict(os.environ, CKPT_PROGRESS_DELAY="0")
    p = subprocess.run([CKPT, "strip", SMALL, tmp_path / "c.pt"], capture_output=True, env=env)
    assert p.returncode == 0 and p.stderr == b"", p.stderr



# Unchanged storages are copied inside the kernel (copy_file_range) and checked by reading the output back.

def flipped_storage_byte(tmp_path):
    """A copy of resnet-sd.pt (every storage goes to strip's output) with one byte of its largest storage flipped,
    its CRC in the zip unchanged."""
    src = os.path.join(os.path.dirname(SMALL), "resnet-sd.pt")
    bad = tmp_path / "flipped.pt"
    data = bytearray(open(src, "rb").read())
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    return bad


def test_a_damaged_storage_fails_the_in_kernel_copy_and_writes_nothing(tmp_path):
    bad = flipped_storage_byte(tmp_path)
    out = tmp_path / "out.pt"
    p = run("strip", bad, out)
    assert p.returncode == 2 and p.stderr.startswith(f"ckpt: {bad}: ") and "crc" in p.stderr.lower(), p.stderr
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if "ckpt-tmp" in f]


SHM = "/dev/shm"


@pytest.mark.skipif(not os.path.isdir(SHM) or os.stat(SHM).st_dev == os.stat("/tmp").st_dev,
                    reason="needs a second file system (/dev/shm) to force the buffered copy")
def test_across_file_systems_the_buffered_copy_writes_the_same_bytes(tmp_path):
    here = tmp_path / "same.pt"
    run("strip", SMALL, here, check=0)
    folder = tempfile.mkdtemp(dir=SHM)
    try:
        there = os.path.join(folder, "same.pt")  # same name: same zip root, so the files can be compared whole
        run("strip", SMALL, there, check=0)
        assert open(there, "rb").read() == here.read_bytes()
        bad = flipped_storage_byte(tmp_path)
        p = run("strip", bad, os.path.join(folder, "bad.pt"))
        assert p.returncode == 2 and "crc" in p.stderr.lower(), p.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)
