"""What lies beside or inside a distributed folder: one of its files passed alone (a DCP `.distcp` or `.metadata`, a
ZeRO-3 rank's model states, whose parameters are empty placeholders) is refused naming the folder to pass, instead of
being read as a small checkpoint; other torch files in the folder (Lightning's `meta.pt`, which Lightning unpickles
with weights_only=False) are named by info and judged by scan; a ZeRO folder without optimizer partitions says where
its weights are."""

import os
import shutil
from pathlib import Path

import torch

from conftest import run, run_json

DIST = Path(__file__).resolve().parents[2] / "fixtures" / "distributed"


def one_line_refusal(p, *words):
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckpt: "), p.stderr
    for w in words:
        assert w in lines[0], p.stderr


def test_a_dcp_data_file_alone_is_refused_naming_its_folder(tmp_path):
    folder = DIST / "dcp-fsdp2-ws2"
    # torch reads the first item of the file as if it were the whole: a single chunk (what ckpt would list).
    first = torch.load(folder / "__0_0.distcp", weights_only=True)
    assert torch.is_tensor(first)
    for name in ["__0_0.distcp", "__1_0.distcp", ".metadata"]:
        for args in (["keys", folder / name], ["info", folder / name], ["consolidate", folder / name, tmp_path / "o.pt"]):
            one_line_refusal(run(*args), "torch.distributed.checkpoint", str(folder))
    assert not (tmp_path / "o.pt").exists()


def test_a_zero3_model_states_file_alone_is_refused(tmp_path):
    tag = (DIST / "zero3" / "latest").read_text().strip()
    f = sorted((DIST / "zero3" / tag).glob("zero_pp_rank_*_model_states.pt"))[0]
    one_line_refusal(run("keys", f), "ZeRO-3", "placeholders", str(f.parent))
    p = run("consolidate", f, tmp_path / "o.pt")
    one_line_refusal(p, "ZeRO-3")
    assert not (tmp_path / "o.pt").exists()
    # The stage 1/2 model file alone holds the whole module: still read.
    tag2 = (DIST / "zero2" / "latest").read_text().strip()
    assert run("keys", DIST / "zero2" / tag2 / "mp_rank_00_model_states.pt", "--record", "module").returncode == 0


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_other_torch_files_in_a_dcp_folder_are_named_and_scanned(tmp_path):
    folder = tmp_path / "lightning-sharded"
    shutil.copytree(DIST / "dcp-fsdp2-ws2", folder)
    torch.save({"epoch": 3, "callbacks": Evil()}, folder / "meta.pt")
    info = run_json("info", folder, "--json")
    notes = " ".join(info["distributed"].get("notes", []))
    assert "meta.pt" in notes, info["distributed"]
    p = run("scan", folder)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "meta.pt" in p.stdout and "system" in p.stdout, p.stdout
    # Without it, the same folder scans clean: the verdict is meta.pt's.
    os.remove(folder / "meta.pt")
    assert run("scan", folder).returncode == 0


def test_a_zero_folder_without_partitions_says_where_the_weights_are(tmp_path):
    folder = tmp_path / "z"
    shutil.copytree(DIST / "zero2", folder)
    tag = (folder / "latest").read_text().strip()
    for f in (folder / tag).glob("*_optim_states.pt"):
        f.unlink()
    p = run("info", folder)
    one_line_refusal(p, "no *_optim_states.pt", "mp_rank_00_model_states.pt", "module")
    assert "not a torch checkpoint" not in p.stderr


def test_dry_run_refuses_what_writing_would_refuse(tmp_path):
    """--dry-run locates and checks every chunk as writing does (a chunk whose shape disagrees with .metadata), so it
    does not report success for an output the real run refuses."""
    import distlib

    src, name = distlib.damaged_dcp(DIST / "dcp-fsdp2-ws2", tmp_path, "size-mismatch")
    for cmd in (["consolidate"], ["convert"], ["strip", "--state-dict"]):
        out = tmp_path / ("o.pt" if cmd[0] != "strip" else "s.pt")
        real = run(cmd[0], *cmd[1:], src, out)
        dry = run(cmd[0], *cmd[1:], src, out, "--dry-run")
        assert real.returncode == 2 and dry.returncode == 2, (cmd, real.stderr, dry.stderr)
        assert name in dry.stderr and len(dry.stderr.strip().splitlines()) == 1, dry.stderr
        assert not out.exists()
