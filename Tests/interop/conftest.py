"""Shared helpers for the interop tests: run the built ckpt, ask torch for its facts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "fixturelib"))

import torch_facts  # noqa: E402

CKPT = os.environ.get("CKPT_BIN", str(ROOT / ".build" / "debug" / "ckpt"))


def run(*args, check=None):
    """Runs ckpt; returns CompletedProcess with text output."""
    p = subprocess.run([CKPT, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check is not None:
        assert p.returncode == check, f"ckpt {' '.join(map(str, args))} exited {p.returncode}: {p.stderr}"
    return p


def run_json(*args):
    p = run(*args, "--json", check=0)
    return json.loads(p.stdout)


def assert_clean_failure(p, path=None):
    """Exit 2 with exactly one line on stderr, `ckpt: FILE: ...`, and nothing on stdout."""
    assert p.returncode == 2, f"expected exit 2, got {p.returncode}: {p.stderr!r}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {p.stderr!r}"
    assert lines[0].startswith("ckpt: "), lines[0]
    if path is not None:
        assert str(path) in lines[0], lines[0]
    assert p.stdout == ""


def weights_only_loads(path):
    """torch's own weights_only=True verdict. Safe on hostile files: weights_only never runs a global it does not
    allow (map_location='cpu': files saved on CUDA load on this machine)."""
    import torch

    try:
        torch.load(path, weights_only=True, map_location="cpu")
        return True
    except Exception:
        return False


def fixture_files():
    return sorted(p for p in FIXTURES.glob("*.pt"))


@pytest.fixture
def tmp(tmp_path):
    return tmp_path
