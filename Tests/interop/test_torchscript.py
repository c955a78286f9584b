"""TorchScript archives (torch.jit.save of script/trace, mobile .ptl, odd layouts) against torch 2.13.

Every archive is written by torch in tmp_path at test time. The oracle is torch.jit.load(f).state_dict() for the
state_dict view, torch.load / safetensors for what `convert` writes, and torch.jit.load + forward for rewrites. Odd
layouts (first record `version`, a root folder whose name starts with a space, deflated records) are made by
re-zipping a torch-written archive with zipfile, after checking that torch.jit.load still loads the result.
"""
import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from conftest import assert_clean_failure, run, run_json

torch.manual_seed(0)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


# ---------------------------------------------------------------------------------------------------------------
# Models: a conv+bn net, a module with buffers (one non-persistent) and a constant tensor, nested submodules,
# ModuleList/ModuleDict, a parameter shared by two submodules.


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        return self.head(y.mean((2, 3)))


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 4))
        self.register_buffer("scratch", torch.zeros(4), persistent=False)
        self.offset = torch.tensor([0.25, -0.5, 1.0, 2.0])  # a plain tensor attribute: a constant when traced

    def forward(self, x):
        return self.lin(x) * self.scale + self.offset


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([WithBuffers(), WithBuffers()])
        self.heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "box": nn.Linear(4, 3)})
        self.shared_a = nn.Linear(4, 4)
        self.shared_b = nn.Linear(4, 4)
        self.shared_b.weight = self.shared_a.weight  # one Parameter in two submodules

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        x = self.shared_b(self.shared_a(x))
        return self.heads["cls"](x) + self.heads["box"](x)


def example_input(name):
    return torch.randn(2, 3, 8, 8) if name.startswith("convbn") else torch.randn(2, 4)


def build(kind, name):
    model = {"convbn": ConvBN, "buffers": WithBuffers, "nested": Nested}[name.split("-")[0]]().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for n, b in model.named_buffers():
            if b.is_floating_point():
                b.add_(torch.rand_like(b))
    if kind == "script":
        return torch.jit.script(model)
    return torch.jit.trace(model, example_input(name))


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """name -> path of every archive torch writes for these tests."""
    d = tmp_path_factory.mktemp("torchscript")
    out = {}
    for name in ["convbn", "buffers", "nested"]:
        for kind in ["script", "trace"]:
            m = build(kind, name)
            p = d / f"{name}-{kind}.pt"
            torch.jit.save(m, str(p))
            out[p.stem] = p
    m = torch.jit.load(str(out["nested-script"]))
    p = d / "nested-extra.pt"
    torch.jit.save(m, str(p), _extra_files={"meta.json": '{"classes": 3}', "notes/readme.txt": "hello"})
    out[p.stem] = p
    for src in ["nested-script", "buffers-trace"]:
        p = d / f"{src}.ptl"
        torch.jit.load(str(out[src]))._save_for_lite_interpreter(str(p))
        out[p.stem + "-mobile"] = p
    return out


def jit_state_dict(path):
    return torch.jit.load(str(path)).state_dict()


def keys_json(path):
    return [(k["name"], k["dtype"], k["shape"]) for k in run_json("keys", path)]


def torch_keys(sd):
    return [(k, str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in sd.items()]


def tensor_bytes(t):
    return t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def rezip(src, dst, order=None, rename=None, deflate=None):
    """Copies a torch-written archive record by record with zipfile (which writes no data alignment), in another
    order, under another root, or with some records deflated; torch.jit.load must still load the result."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as w:
        infos = z.infolist()
        if order:
            infos = order(infos)
        for i in infos:
            name = rename(i.filename) if rename else i.filename
            method = zipfile.ZIP_DEFLATED if deflate and deflate(i.filename) else zipfile.ZIP_STORED
            w.writestr(zipfile.ZipInfo(name), z.read(i.filename), compress_type=method)
    torch.jit.load(str(dst))  # the layout is one torch reads
    return dst


ALL = ["convbn-script", "convbn-trace", "buffers-script", "buffers-trace", "nested-script", "nested-trace",
       "nested-extra", "nested-script-mobile", "buffers-trace-mobile"]


# ---------------------------------------------------------------------------------------------------------------
# keys / info


@pytest.mark.parametrize("name", ALL)
def test_keys_are_jit_state_dict(archives, name):
    path = archives[name]
    sd = jit_state_dict(path)
    assert len(sd) > 0
    assert keys_json(path) == torch_keys(sd)


def test_keys_table_and_prefix(archives):
    path = archives["nested-script"]
    sd = jit_state_dict(path)
    p = run("keys", path, "--prefix", "blocks.1.", check=0)
    names = [line.split()[0] for line in p.stdout.splitlines()]
    assert names == [k for k in sd if k.startswith("blocks.1.")]
    assert "blocks.1.scratch" in names  # a scripted module keeps non-persistent buffers in its state_dict


@pytest.mark.parametrize("name", ["convbn-script", "nested-extra", "nested-script-mobile", "buffers-trace"])
def test_info_says_torchscript_and_lists_records(archives, name):
    path = archives[name]
    info = run_json("info", path)
    assert info["format"] == "TorchScript"
    assert info["top_kind"] == "module"
    sd = jit_state_dict(path)
    (top,) = info["records"]
    assert top["tensors"] == len(sd)
    assert top["elements"] == sum(v.numel() for v in sd.values())
    ts = info["torchscript"]
    with zipfile.ZipFile(path) as z:
        root = z.namelist()[0].split("/")[0]
        expected = [n[len(root) + 1:] for n in z.namelist() if not n.startswith(root + "/data/")]
        deflated = {i.filename[len(root) + 1:] for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED}
    listed = [r["name"] for r in ts["records"]]
    assert listed == expected
    kinds = {r["name"]: r["kind"] for r in ts["records"]}
    assert {r["name"] for r in ts["records"] if r["compressed"]} == deflated
    assert kinds["constants.pkl"] == "constants.pkl"
    assert any(k == "code" for k in kinds.values()) and any(n.endswith(".debug_pkl") for n in kinds)
    assert all(kinds[n] == "debug info" for n in kinds if n.endswith(".debug_pkl"))
    assert ts["mobile"] == name.endswith("mobile")
    if ts["mobile"]:
        assert kinds["bytecode.pkl"] == "mobile bytecode"
    if name == "nested-extra":
        assert kinds["extra/meta.json"] == "extra file" and kinds["extra/notes/readme.txt"] == "extra file"
    text = run("info", path, check=0).stdout
    assert "TorchScript" in text.splitlines()[0]
    assert "constants.pkl" in text and "code/" in text


def constants_of(path):
    """The tensors of constants.pkl, unpickled by Python's pickle with torch's rebuild functions and the storages
    read from the archive's constants/ records (what torch.jit.load's unpickler builds)."""
    with zipfile.ZipFile(path) as z:
        root = z.namelist()[0].split("/")[0]

        class U(pickle.Unpickler):
            def persistent_load(self, pid):
                _, cls, key, _, numel = pid
                data = z.read(f"{root}/constants/{key}")
                return torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage.from_buffer(data, dtype=torch.uint8),
                                                  dtype=cls(0).dtype, _internal=True)

        consts = U(io.BytesIO(z.read(f"{root}/constants.pkl"))).load()
    return [c for c in consts if isinstance(c, torch.Tensor)]


@pytest.mark.parametrize("name", ["buffers-trace", "nested-trace", "buffers-trace-mobile", "nested-script"])
def test_constants_are_counted_not_dropped(archives, name):
    path = archives[name]
    consts = constants_of(path)
    ts = run_json("info", path)["torchscript"]
    assert ts["constants"]["tensors"] == len(consts)
    assert ts["constants"]["elements"] == sum(c.numel() for c in consts)
    assert ts["constants"]["names"] == [f"constants.{i}" for i in range(len(consts))]
    if name != "nested-script":
        assert len(consts) > 0  # traced: the tensor attribute `offset` became a constant


# ---------------------------------------------------------------------------------------------------------------
# convert / diff


@pytest.mark.parametrize("name", ["convbn-script", "nested-trace", "nested-script-mobile", "buffers-trace"])
def test_convert_to_weights_only_pt(archives, name, tmp_path):
    path = archives[name]
    out = tmp_path / "sd.pt"
    run("convert", path, out, check=0)
    sd = jit_state_dict(path)
    got = torch.load(out, weights_only=True)
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert tensor_bytes(got[k]) == tensor_bytes(v), k


@pytest.mark.parametrize("name", ["convbn-trace", "nested-script", "buffers-script"])
def test_convert_to_safetensors(archives, name, tmp_path):
    path = archives[name]
    out = tmp_path / "w.safetensors"
    run("convert", path, out, check=0)
    sd = jit_state_dict(path)
    got = load_file(out)
    from safetensors import safe_open
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    for k, v in sd.items():
        kept = k if k in got else meta[k]  # a shared tensor is stored once, its alias named in __metadata__
        assert tensor_bytes(got[kept]) == tensor_bytes(v), k
        assert got[kept].dtype == v.dtype and got[kept].shape == v.shape
    if name == "nested-script":
        assert "shared_a.weight" in got or "shared_b.weight" in got
        assert not ("shared_a.weight" in got and "shared_b.weight" in got)


def test_diff_two_archives_differing_in_one_tensor(archives, tmp_path):
    a = archives["nested-script"]
    m = torch.jit.load(str(a))
    with torch.no_grad():
        m.heads.box.bias[1] += 0.5
    b = tmp_path / "b.pt"
    torch.jit.save(m, str(b))
    p = run("diff", a, b, "--values", "--json")
    assert p.returncode == 1, p.stderr
    d = json.loads(p.stdout)
    assert [t["name"] for t in d["tensors"]] == ["heads.box.bias"]
    assert d["tensors"][0]["differing"] == 1
    assert d["compared"][0]["common"] == len(jit_state_dict(a))
    assert run("diff", a, a, "--values").returncode == 0


def test_diff_archive_against_state_dict_of_same_model(archives, tmp_path):
    a = archives["convbn-script"]
    sd = tmp_path / "sd.pt"
    torch.save(torch.jit.load(str(a)).state_dict(), sd)
    p = run("diff", a, sd, "--values", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(p.stdout)
    assert d["equal"] and d["compared"][0]["common"] == len(jit_state_dict(a))


def test_transfer_from_an_archive(archives, tmp_path):
    a = archives["convbn-trace"]
    into = tmp_path / "into.pt"
    torch.save(ConvBN().state_dict(), into)
    out = tmp_path / "out.pt"
    run("transfer", a, into, out, check=0)
    got = torch.load(out, weights_only=True)
    for k, v in jit_state_dict(a).items():
        assert tensor_bytes(got[k]) == tensor_bytes(v), k


# ---------------------------------------------------------------------------------------------------------------
# rewrites: refused, one line, nothing written


REWRITES = [["strip"], ["strip", "--half"], ["strip", "--drop", "head.bias"], ["strip", "--state-dict"],
            ["strip", "--rename", "head.=fc."], ["strip", "--dry-run"]]


@pytest.mark.parametrize("name", ["convbn-script", "nested-trace", "nested-script-mobile", "nested-extra"])
@pytest.mark.parametrize("args", REWRITES, ids=lambda a: " ".join(a))
def test_rewrites_are_refused(archives, name, args, tmp_path):
    path = archives[name]
    before = path.read_bytes()
    out = tmp_path / "out.pt"
    cmd, *opts = args
    p = run(cmd, path, out, *opts)
    assert_clean_failure(p, path)
    assert "TorchScript" in p.stderr and "ckpt convert" in p.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert path.read_bytes() == before
    # The input still loads and runs.
    torch.jit.load(str(path))(example_input(name))


def test_transfer_into_an_archive_is_refused(archives, tmp_path):
    into = archives["convbn-script"]
    src = tmp_path / "src.pt"
    torch.save(ConvBN().state_dict(), src)
    out = tmp_path / "out.pt"
    p = run("transfer", src, into, out)
    assert_clean_failure(p, into)
    assert "TorchScript" in p.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# odd layouts


def odd_layouts(src, d):
    first_version = lambda infos: sorted(infos, key=lambda i: not i.filename.endswith("/version"))  # noqa: E731
    return {
        "first-record-version": rezip(src, d / "first-version.pt", order=first_version),
        "root-with-leading-space": rezip(src, d / "space.pt", rename=lambda n: " " + n),
        "deflated-code-and-pickles": rezip(src, d / "deflated.pt",
                                           deflate=lambda n: "/code/" in n or n.endswith(".pkl") or n.endswith("debug_pkl")),
        "everything-deflated": rezip(src, d / "all-deflated.pt", deflate=lambda n: True),
    }


@pytest.mark.parametrize("src", ["nested-trace", "nested-script-mobile"])
def test_odd_layouts(archives, src, tmp_path):
    sd = jit_state_dict(archives[src])
    for layout, path in odd_layouts(archives[src], tmp_path).items():
        assert keys_json(path) == torch_keys(jit_state_dict(path)) == torch_keys(sd), layout
        info = run_json("info", path)
        assert info["format"] == "TorchScript", layout
        assert info["torchscript"]["constants"]["tensors"] == len(constants_of(path)), layout
        if layout == "first-record-version":
            assert info["torchscript"]["records"][0]["name"] == "version"
        if layout == "root-with-leading-space":
            assert info["root"].startswith(" ")
        out = tmp_path / f"{layout}.safetensors"
        run("convert", path, out, check=0)
        got = load_file(out)
        for k, v in sd.items():
            if k in got:
                assert tensor_bytes(got[k]) == tensor_bytes(v), (layout, k)
        p = run("strip", path, tmp_path / "x.pt")
        assert_clean_failure(p, path)
        assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------------------------------------------------
# what ckpt cannot read is said, never an empty listing


def replace_record(src, dst, record_suffix, edit):
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as w:
        for i in z.infolist():
            data = z.read(i.filename)
            if i.filename.endswith(record_suffix):
                data = edit(data)
                if data is None:
                    continue
            w.writestr(zipfile.ZipInfo(i.filename), data)
    return dst


def test_a_declaration_ckpt_cannot_read_is_refused(archives, tmp_path):
    # `weight: Tensor` instead of python_print's `weight : Tensor`: torch's compiler takes it, ckpt's reader
    # of python_print's output does not, and says so instead of listing nothing.
    src = archives["convbn-script"]
    dst = replace_record(src, tmp_path / "edited.pt", "code/__torch__/torch/nn/modules/linear.py",
                         lambda b: b.replace(b"  weight : Tensor", b"  weight: Tensor"))
    assert torch.jit.load(str(dst)).state_dict().keys() == jit_state_dict(src).keys()
    for cmd in (["keys"], ["info"], ["convert", tmp_path / "o.safetensors"]):
        p = run(cmd[0], dst, *cmd[1:])
        assert_clean_failure(p, dst)
        assert "TorchScript class declaration" in p.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_a_missing_declaration_is_refused(archives, tmp_path):
    src = archives["convbn-script"]
    dst = replace_record(src, tmp_path / "nocode.pt", "code/__torch__/torch/nn/modules/batchnorm.py", lambda b: None)
    with pytest.raises(Exception):
        torch.jit.load(str(dst))
    p = run("keys", dst)
    assert_clean_failure(p, dst)
    assert "BatchNorm2d has no declaration under code/" in p.stderr


class WithState(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        self.w = state[0]
        self.training = state[1]


def test_a_module_with_setstate_is_refused(tmp_path):
    path = tmp_path / "setstate.pt"
    torch.jit.save(torch.jit.script(WithState()), str(path))
    assert list(torch.jit.load(str(path)).state_dict()) == ["w"]
    p = run("keys", path)
    assert_clean_failure(p, path)
    assert "__setstate__" in p.stderr


# ---------------------------------------------------------------------------------------------------------------
# scan


@pytest.mark.parametrize("name", ["convbn-script", "nested-trace", "nested-script-mobile"])
def test_scan_reads_the_archive_pickles(archives, name):
    path = archives[name]
    p = run("scan", path, "--json")
    assert p.returncode in (0, 1), p.stderr
    d = json.loads(p.stdout)
    assert d["format"] == "TorchScript"
    assert d["read_error"] is None
    with zipfile.ZipFile(path) as z:
        pkls = [n for n in z.namelist() if n.endswith(".pkl")]
    labels = [s["pickle"] for s in d["pickles"]]
    assert sorted(labels) == sorted(pkls)
    assert all(s["error"] is None for s in d["pickles"])


# ---------------------------------------------------------------------------------------------------------------
# frozen and quantized modules


def test_frozen_module_weights_are_constants_and_said_so(tmp_path):
    path = tmp_path / "frozen.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(ConvBN().eval())), str(path))
    assert len(jit_state_dict(path)) == 0  # freezing folds every weight into constants.pkl
    consts = constants_of(path)
    assert len(consts) > 0
    p = run("keys", path, check=0)
    assert p.stdout.strip() == ""
    assert f"{len(consts)} tensors are in constants.pkl" in p.stderr and "not in the state_dict view" in p.stderr
    assert p.stderr.startswith("note: ") and "see --all" in p.stderr
    # keys --all lists them, as constants.<i>, with torch's dtypes and shapes, and has nothing left to note
    listed = run("keys", path, "--all", "--json", check=0)
    assert [(t["name"], t["dtype"], t["shape"]) for t in json.loads(listed.stdout)] == [
        (f"constants.{i}", str(c.dtype).removeprefix("torch."), list(c.shape)) for i, c in enumerate(consts)]
    assert listed.stderr == ""
    info = run_json("info", path)
    assert info["torchscript"]["constants"]["tensors"] == len(consts)
    assert info["torchscript"]["constants"]["storage_bytes"] == sum(c.untyped_storage().nbytes() for c in consts)
    p = run("convert", path, tmp_path / "w.safetensors")
    assert_clean_failure(p, path)
    assert "constants.pkl" in p.stderr
    assert not (tmp_path / "w.safetensors").exists()


def test_keys_notes_constants_of_a_traced_module(archives):
    path = archives["buffers-trace"]
    p = run("keys", path, check=0)
    n = len(constants_of(path))
    assert f"{n} tensor{'s are' if n > 1 else ' is'} in constants.pkl" in p.stderr
    p = run("keys", archives["convbn-script"], check=0)
    assert p.stderr == ""


class QuantConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.relu(self.conv(self.quant(x))))


@pytest.mark.parametrize("kind", ["static-trace", "dynamic-script"])
def test_quantized_modules(kind, tmp_path):
    # Quantized modules keep their weights in packed-parameter objects set by __setstate__; torch's state_dict of
    # the loaded archive lists only what the classes declare, and so must ckpt.
    if kind == "static-trace":
        m = QuantConv().eval()
        m.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
        prepared = torch.ao.quantization.prepare(m)
        prepared(torch.randn(4, 3, 8, 8))
        s = torch.jit.trace(torch.ao.quantization.convert(prepared), torch.randn(1, 3, 8, 8))
    else:
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        s = torch.jit.script(torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8))
    path = tmp_path / "q.pt"
    torch.jit.save(s, str(path))
    sd = jit_state_dict(path)
    assert keys_json(path) == torch_keys(sd)
    assert run_json("info", path)["records"][0]["tensors"] == len(sd)


@pytest.mark.parametrize("name", ["convbn-trace", "nested-script"])
def test_layers_counts_declared_parameters(archives, name):
    # TorchScript tensors are not wrapped as Parameters in data.pkl: the classes' __parameters__ say which are.
    path = archives[name]
    m = torch.jit.load(str(path))
    t = run_json("layers", path)
    assert t["parameters"] == sum(p.numel() for p in m.parameters())  # named_parameters: each shared one once
    for row in t["layers"]:
        prefix = row["prefix"]
        assert row["parameters"] == sum(p.numel() for n, p in m.named_parameters() if n.startswith(prefix)), prefix
