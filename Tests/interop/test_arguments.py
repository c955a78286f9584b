"""Arguments a shell can pass (issue 11, point 6): every command that takes files answers each with one line
`ckpt: PATH: what is wrong` and exit 2, or works; never a crash, a hang or a stray file.

- A Hugging Face model folder is read through the weights file `from_pretrained` picks: transformers'
  modeling_utils.py `_get_resolved_checkpoint_files`, for a local folder with `use_safetensors=None` (its default
  when safetensors is installed), tries model.safetensors, model.safetensors.index.json, pytorch_model.bin,
  pytorch_model.bin.index.json, each only if `os.path.isfile`. The tensors are compared with what safetensors and
  torch load from that file. Any other folder is refused with what it holds.
- FIFOs, devices and sockets are refused at once (opening a FIFO for reading would block).
- Empty, HTML, Git LFS pointer and text files, unreadable and missing paths, `-`.
- Outputs: an existing folder (cp's `folder/<input name>`), another file system, a missing or unwritable folder,
  a FIFO or device in the output's place, `-`. No temp file is made outside the output's folder.
"""
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import CKPT, FIXTURES, assert_clean_failure

GOOD = FIXTURES / "sd-proto2.pt"
HANG = 20  # seconds: far more than any of these takes; a FIFO opened for reading would wait forever


def ckpt(*args, cwd=None, user=None):
    cmd = [CKPT, *map(str, args)]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=HANG, cwd=cwd)


def temp_files(*folders):
    """The temp files AtomicOutput makes (`.<name>.ckpt-tmp-<pid>-<random>`), anywhere under `folders`."""
    found = []
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            found += [os.path.join(root, f) for f in files if ".ckpt-tmp-" in f]
    return found


def invocations(arg, out):
    """Every command that takes files, with `arg` in each file position (the other files are good)."""
    return [
        ("info", arg), ("keys", arg), ("scan", arg), ("layers", arg),
        ("strip", arg, out / "stripped.pt"), ("convert", arg, out / "converted.safetensors"),
        ("diff", arg, GOOD), ("diff", GOOD, arg),
        ("transfer", arg, GOOD, out / "transferred.pt"), ("transfer", GOOD, arg, out / "transferred.pt"),
        ("consolidate", arg, out / "consolidated.pt"), ("consolidate", arg, "--max-shard-size", "1KB", out / "shards"),
    ]


# ---- Hugging Face model folders ------------------------------------------------------------------------

def tensors(prefix):
    g = torch.Generator().manual_seed(len(prefix))
    return {f"{prefix}.{i}.weight": torch.randn(3, i + 1, generator=g) for i in range(3)} | {
        f"{prefix}.steps": torch.tensor([7], dtype=torch.int64)}


def write_weights(folder, name):
    """Writes `name` into `folder` with tensors named after it, so that keys tell which file was read."""
    prefix = name.split(".")[0]
    if name == "model.safetensors":
        save_file(tensors(prefix), str(folder / name))
    elif name == "pytorch_model.bin":
        torch.save(tensors(prefix), folder / name)
    else:  # an index and two shards of the index's own format
        sd = tensors(prefix + "_sharded")
        keys = list(sd)
        ext = "safetensors" if "safetensors" in name else "bin"
        weight_map = {}
        for i, part in enumerate([keys[:2], keys[2:]]):
            shard = f"{prefix}-0000{i + 1}-of-00002.{ext}"
            chunk = {k: sd[k] for k in part}
            save_file(chunk, str(folder / shard)) if ext == "safetensors" else torch.save(chunk, folder / shard)
            weight_map |= {k: shard for k in part}
        (folder / name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def load_reference(path):
    """What safetensors or torch loads from a weights file or index."""
    if path.name.endswith(".index.json"):
        out = {}
        for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
            out |= load_reference(path.parent / shard)
        return out
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, weights_only=True)


HF_ORDER = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]

# files in the folder -> the one from_pretrained reads (the first of HF_ORDER that is a regular file)
LAYOUTS = {
    "safetensors": ["model.safetensors"],
    "safetensors-index": ["model.safetensors.index.json"],
    "bin": ["pytorch_model.bin"],
    "bin-index": ["pytorch_model.bin.index.json"],
    "all-four": HF_ORDER,
    "safetensors-index-before-bin": ["pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"],
    "bin-before-bin-index": ["pytorch_model.bin.index.json", "pytorch_model.bin"],
}


def keys_of(p):
    return {k["name"]: (k["dtype"], k["shape"]) for k in json.loads(p.stdout)}


def described(sd):
    return {k: (str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in sd.items()}


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_hugging_face_folder_reads_what_from_pretrained_reads(layout, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    for name in LAYOUTS[layout]:
        write_weights(model, name)
    chosen = model / next(n for n in HF_ORDER if (model / n).is_file())
    reference = load_reference(chosen)

    p = ckpt("keys", model, "--json")
    assert p.returncode == 0, p.stderr
    assert keys_of(p) == described(reference)
    info = json.loads(ckpt("info", model, "--json").stdout)
    assert info["format"].endswith(f"from {chosen.name}"), info["format"]

    out = tmp_path / "out"
    out.mkdir()
    p = ckpt("convert", model, out / "m.safetensors")
    assert p.returncode == 0, p.stderr
    written = load_file(str(out / "m.safetensors"))
    assert written.keys() == reference.keys()
    assert all(torch.equal(written[k], reference[k]) for k in reference)
    p = ckpt("strip", model, out / "m.pt")
    assert p.returncode == 0, p.stderr
    loaded = torch.load(out / "m.pt", weights_only=True)
    assert all(torch.equal(loaded[k], reference[k]) for k in reference) and loaded.keys() == reference.keys()
    assert ckpt("diff", model, chosen).returncode == 0
    assert temp_files(tmp_path) == []


def test_a_weights_name_that_is_not_a_file_is_skipped(tmp_path):
    """os.path.isfile: a folder called model.safetensors is passed over for pytorch_model.bin."""
    model = tmp_path / "model"
    (model / "model.safetensors").mkdir(parents=True)
    write_weights(model, "pytorch_model.bin")
    p = ckpt("keys", model, "--json")
    assert p.returncode == 0, p.stderr
    assert keys_of(p) == described(torch.load(model / "pytorch_model.bin", weights_only=True))


# ---- paths that are no checkpoint --------------------------------------------------------------------------

def make_folder_without_checkpoint(p):
    p.mkdir()
    (p / "a.txt").write_text("a")
    (p / "b.pt").write_bytes(GOOD.read_bytes())
    (p / "sub").mkdir()


def make_config_only(p):
    p.mkdir()
    (p / "config.json").write_text('{"model_type": "bert"}')


NOT_CHECKPOINTS = {
    # name: (make it at this path, what the one line says)
    "empty-folder": (lambda p: p.mkdir(), "an empty folder"),
    "folder": (make_folder_without_checkpoint, "a folder, not a checkpoint (it holds 3 entries: a.txt, b.pt, sub/)"),
    "config-only": (make_config_only, "a model folder without weights"),
    "fifo": (lambda p: os.mkfifo(p), "a FIFO (named pipe), not a checkpoint file"),
    "empty.pt": (lambda p: p.write_bytes(b""), "empty file"),
    "page.pt": (lambda p: p.write_text("<!DOCTYPE html>\n<html><head><title>404</title></head></html>\n"),
                "an HTML page, not a checkpoint: a failed download?"),
    "lower-html.pt": (lambda p: p.write_text("\n  <html lang=en><body>Access denied</body></html>"),
                      "an HTML page, not a checkpoint: a failed download?"),
    "lfs.pt": (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\n"
                                      "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
                                      "size 14495302\n"), "a Git LFS pointer to a 14.5 MB file: run git lfs pull"),
    "notes.pt": (lambda p: p.write_text("epoch 5, mAP 0.37\n"), "a text file, not a checkpoint"),
    "missing.pt": (lambda p: None, "no such file"),
    "dangling.pt": (lambda p: os.symlink("nowhere.pt", p), "a symbolic link to 'nowhere.pt', which does not exist"),
    "loop.pt": (lambda p: os.symlink(p.name, p), "a symbolic link loop"),
}
DEVICES = ["/dev/null", "/dev/zero", "/dev/urandom"]


@pytest.mark.parametrize("name", NOT_CHECKPOINTS, ids=str)
def test_what_is_not_a_checkpoint_gets_one_line(name, tmp_path):
    make, says = NOT_CHECKPOINTS[name]
    arg = tmp_path / name
    make(arg)
    out = tmp_path / "out"
    out.mkdir()
    for args in invocations(arg, out):
        p = ckpt(*args, cwd=tmp_path)
        assert_clean_failure(p, arg)
        assert says in p.stderr, (args, p.stderr)
    assert list(out.iterdir()) == [] and temp_files(tmp_path) == []


@pytest.mark.parametrize("device", DEVICES)
def test_devices_are_refused_at_once(device, tmp_path):
    for args in invocations(device, tmp_path):
        p = ckpt(*args, cwd=tmp_path)
        assert_clean_failure(p, device)
        assert "a character device, not a checkpoint file" in p.stderr, (args, p.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_socket_is_refused(tmp_path):
    path = tmp_path / "ckpt.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(1)
        for args in invocations(path, tmp_path)[:5]:
            p = ckpt(*args)
            assert_clean_failure(p, path)
            assert "a socket" in p.stderr, p.stderr


def test_dash_is_refused_as_input_and_output(tmp_path):
    for args in invocations("-", tmp_path):
        p = ckpt(*args, cwd=tmp_path)
        assert_clean_failure(p, "-")
        assert "standard input is not supported" in p.stderr, (args, p.stderr)
    for args in [("strip", GOOD, "-"), ("convert", GOOD, "-"), ("transfer", GOOD, GOOD, "-"), ("consolidate", GOOD, "-"),
                 ("consolidate", GOOD, "--max-shard-size", "1KB", "-")]:
        p = ckpt(*args, cwd=tmp_path)
        assert_clean_failure(p, "-")
        assert p.stderr.startswith("ckpt: -: writing to standard output is not supported"), p.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def world_readable_dir():
    """A folder another user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="ckpt-args-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def as_other_user():
    """Run as nobody when root (root reads any file whatever its mode bits), else as ourselves."""
    return 65534 if os.geteuid() == 0 else None


def test_unreadable_input_gets_one_line(world_readable_dir):
    secret = world_readable_dir / "secret.pt"
    shutil.copy(GOOD, secret)
    secret.chmod(0o600)
    out = world_readable_dir / "out"
    out.mkdir()
    out.chmod(0o777)
    for args in invocations(secret, out):
        p = ckpt(*args, cwd=world_readable_dir, user=as_other_user())
        assert_clean_failure(p, secret)
        assert "permission denied" in p.stderr, (args, p.stderr)
    assert list(out.iterdir()) == []
    folder = world_readable_dir / "private-model"
    folder.mkdir(mode=0o700)
    p = ckpt("keys", folder, user=as_other_user())
    assert_clean_failure(p, folder)
    assert "permission denied" in p.stderr, p.stderr


def test_unwritable_output_folder_gets_one_line(world_readable_dir):
    readable = world_readable_dir / "in.pt"
    shutil.copy(GOOD, readable)
    readable.chmod(0o644)
    locked = world_readable_dir / "locked"
    locked.mkdir(mode=0o755)
    for args in [("strip", readable, locked / "o.pt"), ("convert", readable, locked / "o.safetensors"),
                 ("transfer", readable, readable, locked / "o.pt"), ("strip", readable, locked),
                 ("consolidate", readable, locked / "o.pt"), ("consolidate", readable, "--max-shard-size", "1KB", locked / "o")]:
        p = ckpt(*args, cwd=world_readable_dir, user=as_other_user())
        assert_clean_failure(p, args[-1])
        assert "cannot write in folder" in p.stderr and "permission denied" in p.stderr, (args, p.stderr)
    assert list(locked.iterdir()) == [] and temp_files(world_readable_dir) == []


# ---- outputs -----------------------------------------------------------------------------------------------

def test_output_folder_gets_the_input_name_as_cp_does(tmp_path):
    """`ckpt strip best.pt existing_dir` writes existing_dir/best.pt (the temp file in existing_dir), from any
    working folder; torch loads what is written."""
    work = tmp_path / "work"
    dest = tmp_path / "dest"
    work.mkdir()
    dest.mkdir()
    src = work / "best.pt"
    shutil.copy(GOOD, src)
    reference = torch.load(GOOD, weights_only=True)
    for args, written in [
        (("strip", "best.pt", "../dest"), dest / "best.pt"),
        (("convert", "best.pt", "../dest/"), dest / "best.pt"),
        (("transfer", "best.pt", "best.pt", "../dest"), dest / "best.pt"),
    ]:
        p = ckpt(*args, cwd=work)
        assert p.returncode == 0, (args, p.stderr)
        assert sorted(x.name for x in dest.iterdir()) == ["best.pt"], args
        loaded = torch.load(written, weights_only=True)
        assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)
        written.unlink()
    p = ckpt("strip", "best.pt", ".", cwd=work)  # the input's own folder: in place, as cp would refuse but strip allows
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in work.iterdir()) == ["best.pt"]
    assert temp_files(tmp_path) == []


def test_output_folder_for_a_folder_input_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    write_weights(model, "model.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    for args in [("strip", model, out), ("convert", model, out)]:
        p = ckpt(*args)
        assert_clean_failure(p, out)
        assert "a folder, and so is the input" in p.stderr, p.stderr
    assert list(out.iterdir()) == [] and temp_files(tmp_path) == []


def test_output_on_another_file_system(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no /dev/shm on another file system than the test's tmp folder")
    dest = Path(tempfile.mkdtemp(prefix="ckpt-args-", dir=shm))
    try:
        reference = torch.load(GOOD, weights_only=True)
        for args, out in [(("strip", GOOD), dest / "s.pt"), (("convert", GOOD), dest / "c.safetensors"),
                          (("transfer", GOOD, GOOD), dest / "t.pt")]:
            p = ckpt(*args, out)
            assert p.returncode == 0, p.stderr
            loaded = load_file(str(out)) if out.suffix == ".safetensors" else torch.load(out, weights_only=True)
            assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)
        assert sorted(x.name for x in dest.iterdir()) == ["c.safetensors", "s.pt", "t.pt"]
    finally:
        shutil.rmtree(dest)


def make_char_device(p):
    try:
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own: safe to get wrong
    except PermissionError:
        pytest.skip("cannot make a device node here (no CAP_MKNOD)")


@pytest.mark.parametrize("case", ["missing-folder", "trailing-slash", "parent-is-a-file", "fifo", "device"])
def test_bad_output_paths_get_one_line_and_nothing_written(case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = {
        "missing-folder": work / "nofolder" / "out.pt",
        "trailing-slash": str(work / "newdir") + "/",
        "parent-is-a-file": work / "file.pt" / "out.pt",
        "fifo": work / "fifo.pt",
        "device": work / "null.pt",
    }[case]
    if case == "parent-is-a-file":
        (work / "file.pt").write_bytes(b"x")
    if case == "fifo":
        os.mkfifo(out)
    if case == "device":
        make_char_device(out)
    before = sorted(os.listdir(work))
    says = {"missing-folder": "folder", "trailing-slash": "no such folder", "parent-is-a-file": "is not a folder",
            "fifo": "a FIFO (named pipe), not a file ckpt can replace",
            "device": "a character device, not a file ckpt can replace"}[case]
    for args in [("strip", GOOD, out), ("convert", GOOD, out), ("transfer", GOOD, GOOD, out)]:
        p = ckpt(*args, cwd=work)
        assert_clean_failure(p, out)
        assert says in p.stderr, (args, p.stderr)
        assert sorted(os.listdir(work)) == before, args
    if case in ("fifo", "device"):
        assert not Path(out).is_file()  # not replaced by a regular file
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("args", [("strip", GOOD), ("transfer", GOOD, GOOD)], ids=["strip", "transfer"])
def test_a_torch_checkpoint_is_never_written_under_a_safetensors_name(args, tmp_path):
    # strip and transfer write torch checkpoints; under a .safetensors name that file would be one no safetensors
    # loader opens (safetensors' own load_file refuses a torch zip), so the name is refused and nothing is written.
    out = tmp_path / "out.safetensors"
    p = ckpt(*args, out)
    assert_clean_failure(p, out)
    assert "convert" in p.stderr and not out.exists() and temp_files(tmp_path) == []
    # the same job under a torch name works, and convert writes the safetensors file safetensors loads
    p = ckpt(*args, tmp_path / "out.pt")
    assert p.returncode == 0, p.stderr
    assert ckpt("convert", tmp_path / "out.pt", out).returncode == 0
    reference = torch.load(GOOD, weights_only=True)
    loaded = load_file(str(out))
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)


# ---- --framework, --drop-record, --keep-record (issue 13) -------------------------------------------------

YOLO = FIXTURES / "yolov5s-train.pt"
# The names `--framework` takes: one a convention of CkptCore's table (issue 13).
KNOWN_FRAMEWORKS = ["yolov5", "ultralytics", "lightning", "ldm", "timm", "mmengine", "torchvision", "detectron2",
                    "fairseq", "hf-trainer", "generic"]


def framework_invocations(src, out):
    """Every command that takes --framework, reading `src` (both inputs of diff and transfer), writing under `out`."""
    return {
        "info": ("info", src, "--json"), "keys": ("keys", src, "--json"), "layers": ("layers", src, "--json"),
        "strip": ("strip", src, out / "o.pt", "--json"), "convert": ("convert", src, out / "o.safetensors", "--json"),
        "diff": ("diff", src, src, "--json"), "transfer": ("transfer", src, src, out / "o.pt", "--json"),
    }


def test_an_unknown_framework_gets_one_line_naming_the_known_ones(tmp_path):
    for command, args in framework_invocations(YOLO, tmp_path).items():
        p = ckpt(*args, "--framework", "nosuch")
        assert_clean_failure(p, YOLO)
        assert "unknown framework 'nosuch'" in p.stderr, (command, p.stderr)
        named = {n.strip() for n in p.stderr.split("known:", 1)[-1].split(",")}
        assert set(KNOWN_FRAMEWORKS) <= named, (command, p.stderr)
    assert list(tmp_path.iterdir()) == [] and temp_files(tmp_path) == []


def zip_records(path):
    """A torch zip's records by name, without the root folder (named after the file) and the times zip stores."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


def without_framework(report):
    """A JSON report without what says which framework's conventions were followed and why (the evidence differs
    when the framework is named rather than detected: that is the only difference naming it may make)."""
    return {k: v for k, v in report.items() if k != "framework"} if isinstance(report, dict) else report


@pytest.mark.parametrize("command", list(framework_invocations(YOLO, Path())), ids=str)
def test_naming_the_detected_framework_changes_nothing(command, tmp_path):
    """`--framework yolov5` on a YOLOv5 training checkpoint: the report and the file written are those the
    detection gives."""
    detected, named = tmp_path / "detected", tmp_path / "named"
    detected.mkdir()
    named.mkdir()
    a = ckpt(*framework_invocations(YOLO, detected)[command])
    b = ckpt(*framework_invocations(YOLO, named)[command], "--framework", "yolov5")
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    assert b.stderr == a.stderr
    assert without_framework(json.loads(b.stdout.replace(str(named), str(detected)))) == \
        without_framework(json.loads(a.stdout))
    written = sorted(x.name for x in detected.iterdir())
    assert sorted(x.name for x in named.iterdir()) == written
    for name in written:
        if name.endswith(".pt"):
            assert zip_records(named / name) == zip_records(detected / name), name
        else:
            assert (named / name).read_bytes() == (detected / name).read_bytes(), name


def test_a_record_both_dropped_and_kept_is_refused(tmp_path):
    out = tmp_path / "o.pt"
    p = ckpt("strip", YOLO, out, "--drop-record", "date", "--keep-record", "opt", "--keep-record", "date")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("ckpt: ") and "--drop-record" in p.stderr and "'date'" in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []


def test_drop_record_and_keep_record_reach_strip(tmp_path):
    """--drop-record removes a record strip would keep (date); --keep-record keeps one it would set to None
    (optimizer), as torch.load reads it in the input."""
    out = tmp_path / "o.pt"
    p = ckpt("strip", YOLO, out, "--drop-record", "date", "--keep-record", "optimizer")
    assert p.returncode == 0, p.stderr
    src = torch.load(YOLO, weights_only=False)
    got = torch.load(out, weights_only=False)
    assert "date" in src and "date" not in got
    assert got["optimizer"]["param_groups"] == src["optimizer"]["param_groups"]
    want, have = src["optimizer"]["state"], got["optimizer"]["state"]
    assert want.keys() == have.keys()
    for i in want:
        assert want[i].keys() == have[i].keys()
        for k in want[i]:
            assert torch.equal(want[i][k], have[i][k]), (i, k)
    assert got["ema"] is None and got["epoch"] == -1  # the rest of strip is unchanged
