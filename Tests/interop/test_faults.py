"""Faults while writing: a strip killed with SIGKILL midway, or running out of space, leaves no OUT, the
input unchanged, and no stray temporary file once the next run has cleaned up."""
import hashlib
import os
import resource
import signal
import subprocess
import time

import pytest
import torch

from conftest import CKPT, assert_clean_failure, run


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def temps(folder):
    return sorted(p.name for p in folder.iterdir() if ".ckpt-tmp-" in p.name)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A training checkpoint with 32 MB of float32 weights (--half makes the debug build take seconds on it)."""
    folder = tmp_path_factory.mktemp("big")
    path = folder / "big.pt"
    g = torch.Generator().manual_seed(0)
    model = {f"layer{i}.weight": torch.randn(1 << 20, generator=g) for i in range(8)}
    torch.save({"epoch": 3, "model": model, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def kill_midway(args, out):
    """Starts `ckpt strip ...`, waits until its temporary output holds a few MB, and SIGKILLs it."""
    p = subprocess.Popen([CKPT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        t = [f for f in out.parent.iterdir() if f.name.startswith(f".{out.name}.ckpt-tmp-")]
        if t and t[0].stat().st_size > (4 << 20):
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            return p.pid
        if p.poll() is not None:
            pytest.fail(f"strip ended before it could be killed (exit {p.returncode}); make the input bigger")
        time.sleep(0.002)
    p.kill()
    pytest.fail("strip never started writing")


@pytest.mark.parametrize("in_place", [False, True], ids=["to-new-file", "in-place"])
def test_sigkill_midway(big, tmp_path, in_place):
    src = tmp_path / "in.pt"
    src.write_bytes(big.read_bytes())
    before = sha(src)
    out = src if in_place else tmp_path / "out.pt"
    pid = kill_midway(["strip", src, out, "--half"], out)

    assert sha(src) == before, "the input changed"
    if not in_place:
        assert not out.exists(), "a killed strip left OUT behind"
    stale = temps(tmp_path)
    assert stale and all(f".ckpt-tmp-{pid}-" in n for n in stale), stale  # the kill really left a partial temp

    run("strip", src, out, check=0)  # the next run (without --half: quicker, same clean-up)
    assert temps(tmp_path) == [], "the next run left the stale temp file"
    got = torch.load(out, weights_only=True)
    want = torch.load(big, weights_only=True)
    assert got["epoch"] == -1 and got["optimizer"] is None
    for k, t in want["model"].items():
        assert torch.equal(got["model"][k], t), k


def check_out_of_space(p, src, before, out):
    assert_clean_failure(p, out)
    assert sha(src) == before
    assert not out.exists()
    assert temps(out.parent) == []


def test_full_disk_tmpfs(big, tmp_path):
    """OUT on an 8 MB tmpfs (needs root and mount permission; the file-size-limit test below always runs)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or mount not permitted)")
    try:
        before = sha(big)
        out = mnt / "out.pt"
        p = run("strip", big, out)
        check_out_of_space(p, big, before, out)
        assert "space" in p.stderr.lower(), p.stderr
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_file_size_limit(big, tmp_path):
    """RLIMIT_FSIZE at 8 MB with SIGXFSZ ignored: writes past it fail with EFBIG, as a full disk fails them."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

    before = sha(big)
    out = tmp_path / "out.pt"
    p = subprocess.run([CKPT, "strip", str(big), str(out)], capture_output=True, text=True, preexec_fn=limit,
                       timeout=300)
    check_out_of_space(p, big, before, out)
    assert "too large" in p.stderr.lower(), p.stderr
