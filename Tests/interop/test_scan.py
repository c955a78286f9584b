"""ckpt scan against the references: picklescan's verdict, the globals torch_facts records, and what
torch.load(weights_only=True) really does. Malicious fixtures are never unpickled here."""
import builtins
import hashlib
import json
import re

import pytest
import torch
from picklescan.scanner import scan_file_path

from conftest import FIXTURES, assert_clean_failure, fixture_files, run, weights_only_loads

MALICIOUS = sorted((FIXTURES / "malicious").glob("*.pt"))
CLEAN = fixture_files()


def scan(path):
    p = run("scan", path, "--json")
    assert p.returncode in (0, 1), f"ckpt scan {path} exited {p.returncode}: {p.stderr}"
    return p.returncode, json.loads(p.stdout)


def picklescan_dangerous(path):
    return scan_file_path(str(path)).issues_count > 0



def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_there_are_malicious_fixtures():
    names = {p.stem for p in MALICIOUS}
    for want in ["os-system", "posix-system", "builtins-exec", "builtins-eval", "subprocess-popen", "runpy-run-code",
                 "getattr-chain", "stack-global-computed", "stack-global-memo", "legacy-sys-info-os-system"]:
        assert want in names


@pytest.mark.parametrize("path", MALICIOUS, ids=lambda p: p.name)
def test_malicious_is_flagged_dangerous_as_picklescan_says(path):
    code, report = scan(path)
    facts = json.loads(path.with_suffix(".facts.json").read_text())
    assert code == 1
    assert report["verdict"] == "dangerous"
    dangerous = [g["name"] for g in report["globals"] if g["class"] == "dangerous"]
    assert dangerous, report
    assert picklescan_dangerous(path), "picklescan disagrees"
    # The call the recording unpickler saw is among what ckpt flags (computed names are flagged by position).
    called = facts["payload_calls"]
    if "computed" in path.stem:
        assert any(n.startswith("<computed by STACK_GLOBAL") for n in dangerous), dangerous
    else:
        assert called in dangerous, (called, dangerous)
    assert report["weights_only"]["loads"] is False
    assert weights_only_loads(path) is False


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: p.name)
def test_clean_fixture_is_not_dangerous_and_picklescan_agrees(path):
    code, report = scan(path)
    assert code == 0
    assert report["dangerous"] == 0
    assert not picklescan_dangerous(path)


@pytest.mark.parametrize("path", CLEAN + MALICIOUS, ids=lambda p: p.name)
def test_weights_only_verdict_is_torchs(path):
    _, report = scan(path)
    facts = json.loads(path.with_name(path.stem + ".facts.json").read_text())
    assert report["weights_only"]["loads"] == facts["weights_only_loads"], report["weights_only"]
    assert report["weights_only"]["loads"] == weights_only_loads(path)


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: p.name)
def test_globals_are_the_ones_pickle_looks_up(path):
    """Every global the pickle's Unpickler asks find_class for (torch_facts records them), no more, no fewer."""
    _, report = scan(path)
    facts = json.loads(path.with_name(path.stem + ".facts.json").read_text())
    assert {g["name"] for g in report["globals"]} == set(facts["pickle"]["globals"])


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: p.name)
def test_classes(path):
    """safe = what weights_only allows, numpy reconstruction, or a builtin plain-value type; everything in a clean
    fixture is safe or needs-code."""
    _, report = scan(path)
    allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    plain = (int, float, complex, str, bytes, bytearray, list, tuple, set, frozenset, dict)
    for g in report["globals"]:
        name = g["name"].replace("__builtin__.", "builtins.")
        value = getattr(builtins, name[len("builtins."):], None) if name.startswith("builtins.") else None
        if name in allowed:
            assert g["class"] == "safe", g
        elif name.startswith("numpy."):
            assert g["class"] == "safe", g
        elif isinstance(value, type) and issubclass(value, plain):
            assert g["class"] == "safe", g
        else:
            assert g["class"] == "needs-code", g


def test_table_output(tmp_path):
    p = run("scan", FIXTURES / "malicious" / "os-system.pt")
    assert p.returncode == 1
    assert "os.system" in p.stdout and "dangerous" in p.stdout
    assert p.stderr.strip().splitlines()[0].startswith("ckpt: ")
    p = run("scan", FIXTURES / "yolov5s-train.pt", check=0)
    assert "models.yolo.DetectionModel" in p.stdout and "needs-code" in p.stdout


@pytest.mark.parametrize("path", MALICIOUS, ids=lambda p: p.name)
def test_strip_refuses_dangerous_files(path, tmp_path):
    out = tmp_path / "out.pt"
    before = sha(path)
    p = run("strip", path, out)
    assert out.exists() is False
    assert list(tmp_path.iterdir()) == []
    assert sha(path) == before
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ckpt: {path}: refusing to rewrite"), lines
    assert "--allow-unsafe" in lines[0]


@pytest.mark.parametrize("name", ["os-system", "builtins-eval", "getattr-chain", "stack-global-memo"])
def test_strip_allow_unsafe_copies_the_globals_unchanged(name, tmp_path):
    src = FIXTURES / "malicious" / f"{name}.pt"
    out = tmp_path / "out.pt"
    run("strip", src, out, "--allow-unsafe", check=0)
    _, before = scan(src)
    code, after = scan(out)
    assert code == 1
    # (a computed callable is named by its byte offset, which the rewrite moves)
    dangerous = lambda r: sorted((re.sub(r" at byte \d+", "", g["name"]), g["use"], g["count"])  # noqa: E731
                                 for g in r["globals"] if g["class"] == "dangerous")
    assert dangerous(after) == dangerous(before)
    assert picklescan_dangerous(out)
    # The weights beside the payload come through: torch's weights_only reader refuses the payload, so compare
    # the state dicts through ckpt keys against torch's facts of the source.
    keys = json.loads(run("keys", out, "--record", "state_dict", "--json", check=0).stdout)
    src_keys = json.loads(run("keys", src, "--record", "state_dict", "--json", check=0).stdout)
    assert keys == src_keys


def test_scan_of_unreadable_file_is_a_clean_failure():
    for name in ["truncated-central-directory.pt", "not-a-checkpoint.pt", "empty-file.pt", "unknown-opcode.pt"]:
        path = FIXTURES / "bad" / name
        assert_clean_failure(run("scan", path), path)


def test_bare_pickle_files(tmp_path):
    """A file that is no checkpoint at all is still unpickled by torch.load (its first pickle, before any check):
    scan flags a dangerous one (exit 1) and calls a harmless one unreadable (exit 2)."""
    evil = tmp_path / "model.pkl"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00echo\x85R.")
    code, report = scan(evil)
    assert code == 1 and report["format"] == "pickle stream"
    assert [g["name"] for g in report["globals"] if g["class"] == "dangerous"] == ["posix.system"]
    assert picklescan_dangerous(evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(b"\x80\x02]q\x00K\x01a.")
    assert_clean_failure(run("scan", plain), plain)
    assert not picklescan_dangerous(plain)


def test_dangerous_global_before_a_malformed_tail(tmp_path):
    """Unpickling runs opcodes as it reads them: a payload followed by garbage has already run. Exit 1, not 2."""
    src = (FIXTURES / "malicious" / "os-system.pt")
    import zipfile
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        data = {n: z.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    data[pkl] = data[pkl][:-1] + b"\xff"
    bad = tmp_path / "tail.pt"
    with zipfile.ZipFile(bad, "w") as z:
        for n in names:
            z.writestr(n, data[n])
    code, report = scan(bad)
    assert code == 1
    assert report["read_error"] and "unknown pickle opcode" in report["read_error"]
    assert "os.system" in [g["name"] for g in report["globals"] if g["class"] == "dangerous"]


@pytest.mark.parametrize("command", ["convert-safetensors", "convert-torch", "transfer-from", "transfer-into"])
def test_every_rewriting_command_refuses_dangerous_files(command, tmp_path):
    """convert and transfer go through the same check as strip; --allow-unsafe lets them write."""
    evil = FIXTURES / "malicious" / "os-system.pt"
    clean = FIXTURES / "sd-proto2.pt"
    out = tmp_path / ("out.safetensors" if command == "convert-safetensors" else "out.pt")
    args = {
        "convert-safetensors": ["convert", evil, out, "--record", "state_dict"],
        "convert-torch": ["convert", evil, out, "--record", "state_dict"],
        "transfer-from": ["transfer", evil, clean, out, "--from-record", "state_dict"],
        "transfer-into": ["transfer", clean, evil, out, "--into-record", "state_dict"],
    }[command]
    p = run(*args)
    assert p.returncode == 1, p.stderr
    assert "refusing to rewrite" in p.stderr and "os.system" in p.stderr
    assert list(tmp_path.iterdir()) == []
    p = run(*args, "--allow-unsafe")
    assert p.returncode == 0, p.stderr
    assert out.exists()
    if command == "convert-torch":  # only the state dict is written: nothing of the payload is left
        assert scan(out)[0] == 0
        assert not picklescan_dangerous(out)
