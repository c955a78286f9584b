"""safetensors, legacy .pth, sharded checkpoints and ONNX, against the reference libraries: safetensors,
torch, onnx. Every file here is written by the reference library (or by ckpt and read back by it)."""
import collections
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import _find_shared_tensors, _is_complete, load_file, save_file

from conftest import FIXTURES, assert_clean_failure, run, run_json, torch_facts

# dtypes safetensors.torch can write, each with a few random bit patterns.
SAFE_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
               torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2,
               torch.float8_e5m2fnuz, torch.complex64, torch.uint64, torch.uint32, torch.uint16]


def random_tensor(dtype, shape, gen):
    """Random bits of any dtype (bool: 0/1), so bit-identity is tested on every pattern, NaNs included."""
    n = int(np.prod(shape)) if shape else 1
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * size,), generator=gen, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same_tensors(got, want):
    """Same names in the same order, and each tensor the same dtype, shape and bytes."""
    assert list(got) == list(want)
    for k in want:
        a, b = got[k], want[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert torch.equal(bits(a), bits(b)), f"{k}: bytes differ"


def keys_listing(sd):
    return [{"name": k, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in sd.items()]


def convert_py_aliases(state_dict):
    """The aliases Hugging Face's convert.py (safetensors/bindings/python/convert.py, `_remove_duplicate_names`)
    leaves out, {removed: kept}: the library's own shared-tensor search, a lone view is kept (cloned), and of a group
    the first complete name in sorted order is kept."""
    aliases = {}
    for shared in _find_shared_tensors(state_dict):
        complete = sorted(n for n in shared if _is_complete(state_dict[n]))
        if not complete:
            assert len(shared) == 1, f"convert.py refuses {shared}"
            continue
        aliases.update({n: complete[0] for n in sorted(shared) if n != complete[0]})
    return aliases


def split_metadata(meta):
    """A safetensors `__metadata__` ckpt wrote, as (format and alias entries, {record: value}): the record entries are
    the ones `ckpt.records` lists (JSON values), and `ckpt.records` / `ckpt.weights` themselves (README: convert)."""
    if "ckpt.records" not in meta:
        return dict(meta), {}
    names = [n for n in json.loads(meta["ckpt.records"]) if n != meta["ckpt.weights"]]
    rest = {k: v for k, v in meta.items() if k not in names and k not in ("ckpt.records", "ckpt.weights")}
    return rest, {n: json.loads(meta[n]) for n in names}


def every_dtype_state_dict(seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd = collections.OrderedDict()
    for i, dt in enumerate(SAFE_DTYPES):
        name = str(dt).replace("torch.", "")
        sd[f"t.{name}"] = random_tensor(dt, [2, 3], gen)
        sd[f"a.{name}"] = random_tensor(dt, [5], gen)  # same dtype: layout order within a dtype is by name
    sd["zero_dim"] = random_tensor(torch.float32, [], gen)
    sd["empty"] = torch.zeros(0, dtype=torch.float16)
    sd["empty_3x0"] = torch.zeros(3, 0, dtype=torch.int32)
    sd["unicode.é.名前"] = random_tensor(torch.float32, [2], gen)
    return sd


# ---- safetensors ------------------------------------------------------------------------------------------------

def test_safetensors_file_is_bit_identical_to_save_file(tmp):
    sd = every_dtype_state_dict()
    src, ours, ref = tmp / "x.pt", tmp / "ours.safetensors", tmp / "ref.safetensors"
    torch.save(sd, src)
    run("convert", src, ours, check=0)
    save_file(sd, ref, metadata={"format": "pt"})
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("fixture,record", [("resnet-sd.pt", None), ("yolov5s-train.pt", "model"),
                                            ("ultralytics-train.pt", "ema"), ("sd-legacy.pt", None),
                                            ("resnet-nested.pt", "state_dict")])
def test_pt_to_safetensors_to_pt_keeps_every_tensor(tmp, fixture, record):
    path = FIXTURES / fixture
    obj = torch.load(path, weights_only=False)
    sd = obj[record] if record else obj
    sd = sd.state_dict() if isinstance(sd, nn.Module) else sd
    st, back = tmp / "x.safetensors", tmp / "back.pt"
    args = ["--record", record] if record else []
    run("convert", path, st, *args, check=0)

    aliases = convert_py_aliases(sd)
    want = collections.OrderedDict((k, v) for k, v in sd.items() if k not in aliases)
    with safe_open(st, "pt") as f:
        meta, records = split_metadata(f.metadata())
        assert meta == {"format": "pt", **aliases}
        assert sorted(f.keys()) == sorted(want)
        for k in f.keys():
            assert torch.equal(bits(f.get_tensor(k)), bits(want[k])), k
    assert torch_equal_dicts(load_file(st), want)
    # the records carried beside the weights are Python's own JSON of them (test_convert_records has the rest)
    assert records == {k: json.loads(json.dumps(obj[k])) for k in records}

    run("convert", st, back, check=0)
    loaded = torch.load(back, weights_only=True)
    if records:
        assert {k: v for k, v in loaded.items() if k != (record or "")} == records
        loaded = loaded[record]
    assert_same_tensors(loaded, load_file(st))


def torch_equal_dicts(a, b):
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(bits(a[k]), bits(b[k])) for k in a)


def test_views_are_compacted_and_shared_tensors_deduplicated_as_convert_py(tmp):
    gen = torch.Generator().manual_seed(3)
    base = random_tensor(torch.float32, [4, 6], gen)
    base2 = random_tensor(torch.float32, [4, 6], gen)
    store = random_tensor(torch.int32, [20], gen)
    store2 = random_tensor(torch.float16, [12], gen)
    emb = nn.Parameter(random_tensor(torch.float16, [5, 3], gen))
    sd = collections.OrderedDict([
        ("transposed", random_tensor(torch.float32, [3, 4], gen).t()),
        ("step_slice", random_tensor(torch.float64, [21], gen)[::3]),
        ("expanded", random_tensor(torch.bfloat16, [3, 1], gen).expand(3, 4)),
        ("window", base2[1:3, 2:5]),              # strided view of a storage nobody else uses
        ("view_a", store[2:8]),                   # two overlapping views of one storage, neither covers it
        ("view_b", store[6:14].view(2, 4)),
        ("q", store2[0:4]),                       # disjoint views of one storage (a fused qkv split): kept
        ("k", store2[4:8]),
        ("embed.weight", emb),                    # tied: the same storage under two names
        ("lm_head.weight", emb),
        ("whole", base),                          # a complete tensor and a view of it
        ("whole_row", base[2]),
        ("nhwc", random_tensor(torch.uint8, [2, 3, 4, 5], gen).permute(0, 2, 3, 1)),
    ])
    src, st = tmp / "views.pt", tmp / "views.safetensors"
    torch.save(sd, src)
    p = run("convert", src, st, check=0)
    # convert.py refuses overlapping views none of which covers the storage; ckpt writes each, with a warning
    assert "view_a, view_b overlap" in p.stderr and "q," not in p.stderr
    aliases = convert_py_aliases({k: v for k, v in sd.items() if not k.startswith("view_")})
    assert aliases == {"lm_head.weight": "embed.weight", "whole_row": "whole"}
    with safe_open(st, "pt") as f:
        assert f.metadata() == {"format": "pt", **aliases}
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert torch_equal_dicts(got, {k: v.contiguous() for k, v in sd.items() if k not in aliases})
    # The kept tensors in the reference layout: save_file of the same contiguous tensors gives the same bytes.
    ref = tmp / "ref.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items() if k not in aliases}, ref,
              metadata={"format": "pt", **aliases})
    n = struct.unpack("<Q", st.read_bytes()[:8])[0]
    assert json.loads(st.read_bytes()[8:8 + n]) == json.loads(ref.read_bytes()[8:8 + n])
    assert st.read_bytes()[8 + n:] == ref.read_bytes()[8 + n:]


def test_keys_and_info_read_safetensors_directly(tmp):
    sd = every_dtype_state_dict(1)
    path = tmp / "m.safetensors"
    save_file(sd, path, metadata={"format": "pt", "note": "hi"})
    loaded = load_file(path)
    assert run_json("keys", path) == keys_listing(loaded)
    info = run_json("info", path)
    assert info["format"] == "safetensors" and info["file_size"] == path.stat().st_size
    assert info["metadata"] == {"format": "pt", "note": "hi"}
    [r] = info["records"]
    assert r["kind"] == "state_dict" and r["tensors"] == len(sd)
    assert r["elements"] == sum(v.numel() for v in sd.values())
    assert r["bytes"] == sum(v.numel() * v.element_size() for v in sd.values())
    # strip reads it too, and writes the state dict torch.save would
    out = tmp / "s.pt"
    run("strip", path, out, check=0)
    assert_same_tensors(torch.load(out, weights_only=True), loaded)


def test_safetensors_to_pt_equals_torch_save_of_load_file(tmp):
    path, out = tmp / "m.safetensors", tmp / "m.pt"
    save_file(every_dtype_state_dict(2), path)
    run("convert", path, out, check=0)
    want = load_file(path)
    got = torch.load(out, weights_only=True)
    assert_same_tensors(got, want)
    assert type(got) is collections.OrderedDict


@pytest.mark.parametrize("defect", ["truncated", "header_too_long", "bad_json", "gap", "trailing", "bad_dtype",
                                    "size_mismatch", "not_an_object"])
def test_damaged_safetensors_exit_2(tmp, defect):
    path = tmp / "ok.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.int16)}, path)
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])

    def with_header(h, body=data[8 + n:]):
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + body

    if defect == "truncated":
        bad = data[:-3]
    elif defect == "header_too_long":
        bad = struct.pack("<Q", len(data)) + data[8:]
    elif defect == "bad_json":
        bad = struct.pack("<Q", n) + b"{" + b"x" * (n - 1) + data[8 + n:]
    elif defect == "gap":
        header["b"]["data_offsets"] = [header["b"]["data_offsets"][0] + 2, header["b"]["data_offsets"][1] + 2]
        bad = with_header(header, data[8 + n:] + b"\0\0")
    elif defect == "trailing":
        bad = data + b"\0"
    elif defect == "bad_dtype":
        header["a"]["dtype"] = "F7"
        bad = with_header(header)
    elif defect == "size_mismatch":
        header["a"]["shape"] = [2, 4]
        bad = with_header(header)
    else:
        bad = with_header([1, 2])
    p = tmp / "bad.safetensors"
    p.write_bytes(bad)
    for cmd in ("keys", "info"):
        assert_clean_failure(run(cmd, p), p)
    r = run("convert", p, tmp / "out.pt")
    assert_clean_failure(r, p)
    assert not (tmp / "out.pt").exists()


def test_convert_refuses_what_safetensors_cannot_hold(tmp):
    src = tmp / "c.pt"
    torch.save({"q": torch.zeros(2, dtype=torch.complex128)}, src)
    r = run("convert", src, tmp / "c.safetensors")
    assert_clean_failure(r, src)
    assert "complex128" in r.stderr
    assert not (tmp / "c.safetensors").exists()


def test_diff_pt_and_its_safetensors_exits_0(tmp):
    src, st = tmp / "x.pt", tmp / "x.safetensors"
    sd = every_dtype_state_dict(4)
    torch.save(sd, src)
    run("convert", src, st, check=0)
    run("diff", src, st, "--values", check=0)
    # and a different value is found
    sd["t.float32"] = sd["t.float32"].clone()
    sd["t.float32"].view(torch.int32)[0, 0] ^= 1
    save_file(sd, tmp / "y.safetensors")
    assert run("diff", src, tmp / "y.safetensors", "--values").returncode == 1


# ---- legacy (pre-1.6) files ---------------------------------------------------------------------------------------

class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


@pytest.mark.parametrize("what", ["state_dict", "module", "nested_with_views"])
def test_legacy_files_read_like_torch_and_write_zip(tmp, what):
    torch.manual_seed(5)
    m = Small()
    if what == "state_dict":
        obj = m.state_dict()
    elif what == "module":
        obj = {"model": m, "epoch": 3}
    else:
        w = torch.randn(6, 5)
        obj = {"state_dict": {"w": w, "row": w[2], "w_t": torch.randn(5, 6).t(), "half": torch.randn(3).half()},
               "step": 7}
    path = tmp / f"{what}.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    record = {"state_dict": None, "module": "model", "nested_with_views": "state_dict"}[what]
    orig = torch.load(path, weights_only=False)
    want = orig if record is None else orig[record]
    want = want.state_dict() if isinstance(want, nn.Module) else want
    assert run_json("keys", path, *(["--record", record] if record else [])) == keys_listing(want)
    info = run_json("info", path)
    assert info["format"] == "torch legacy"
    if record:
        assert [r["name"] for r in info["records"]] == list(orig)
        assert info["records"][0]["tensors"] == len(want)

    stripped = tmp / "stripped.pt"
    run("strip", path, stripped, check=0)
    import zipfile
    assert zipfile.is_zipfile(stripped)
    got = torch.load(stripped, weights_only=False)
    got = got if record is None else got[record]
    got = got.state_dict() if isinstance(got, nn.Module) else got
    assert_same_tensors(got, want)

    st = tmp / "x.safetensors"
    run("convert", path, st, check=0)
    aliases = convert_py_aliases(want)
    assert torch_equal_dicts(load_file(st), {k: v for k, v in want.items() if k not in aliases})


# ---- sharded checkpoints ------------------------------------------------------------------------------------------

def write_sharded(folder, sd, kind, shards=3):
    """Shards a state dict as transformers' save_pretrained does: consecutive tensors, index with weight_map."""
    names = list(sd)
    per = -(-len(names) // shards)
    weight_map = {}
    ext = "safetensors" if kind == "safetensors" else "bin"
    prefix = "model" if kind == "safetensors" else "pytorch_model"
    for i in range(shards):
        part = collections.OrderedDict((k, sd[k].contiguous().clone()) for k in names[i * per:(i + 1) * per])
        fname = f"{prefix}-{i + 1:05d}-of-{shards:05d}.{ext}"
        if kind == "safetensors":
            save_file(part, folder / fname, metadata={"format": "pt"})
        else:
            torch.save(part, folder / fname, _use_new_zipfile_serialization=(kind != "legacy"))
        weight_map.update({k: fname for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = folder / (f"{prefix}.{ext}.index.json")
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2,
                                sort_keys=True) + "\n")
    return index


def merged_shards(index):
    """What torch gives for a sharded checkpoint: each shard loaded, in file order, merged."""
    weight_map = json.loads(index.read_text())["weight_map"]
    out = collections.OrderedDict()
    for fname in sorted(set(weight_map.values())):
        p = index.parent / fname
        out.update(load_file(p) if fname.endswith(".safetensors") else torch.load(p, weights_only=True))
    return out


@pytest.mark.parametrize("kind", ["bin", "legacy", "safetensors"])
def test_sharded_checkpoint_reads_as_one(tmp, kind):
    sd = torch.load(FIXTURES / "resnet-sd.pt", weights_only=True)
    index = write_sharded(tmp, sd, kind)
    want = merged_shards(index)
    assert run_json("keys", index) == keys_listing(want)
    info = run_json("info", index)
    assert info["format"].startswith("sharded") and "3 shards" in info["format"]
    assert info["records"][0]["tensors"] == len(want)
    out = tmp / "merged.safetensors"
    run("convert", index, out, check=0)
    assert torch_equal_dicts(load_file(out), want)
    pt = tmp / "merged.pt"
    run("convert", index, pt, check=0)
    assert_same_tensors(torch.load(pt, weights_only=True), want)


@pytest.mark.parametrize("defect", ["missing_shard", "key_not_in_shard", "outside_folder", "duplicate_key", "no_map"])
def test_broken_shard_index_exits_2(tmp, defect):
    sd = torch.load(FIXTURES / "sd-proto2.pt", weights_only=True)
    index = write_sharded(tmp, sd, "bin", shards=2)
    doc = json.loads(index.read_text())
    wm = doc["weight_map"]
    first = sorted(set(wm.values()))[0]
    if defect == "missing_shard":
        (tmp / first).unlink()
    elif defect == "key_not_in_shard":
        wm["not.there"] = first
    elif defect == "outside_folder":
        wm[next(iter(wm))] = "../elsewhere.bin"
    elif defect == "duplicate_key":
        second = sorted(set(wm.values()))[1]
        part = torch.load(tmp / second, weights_only=True)
        part[next(k for k, f in wm.items() if f == first)] = torch.zeros(1)
        torch.save(part, tmp / second)
    else:
        del doc["weight_map"]
    index.write_text(json.dumps(doc))
    assert_clean_failure(run("keys", index), index)


# ---- ONNX ---------------------------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper, TensorProto  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def export(model, path):
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)


def onnx_initializers(path):
    m = onnx.load(str(path))
    return [(i.name, numpy_helper.to_array(i, base_dir=str(path.parent))) for i in m.graph.initializer], m


ONNX_TO_TORCH = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8", TensorProto.INT8: "int8",
                 TensorProto.UINT16: "uint16", TensorProto.INT16: "int16", TensorProto.INT32: "int32",
                 TensorProto.INT64: "int64", TensorProto.BOOL: "bool", TensorProto.FLOAT16: "float16",
                 TensorProto.DOUBLE: "float64", TensorProto.UINT32: "uint32", TensorProto.UINT64: "uint64",
                 TensorProto.COMPLEX64: "complex64", TensorProto.COMPLEX128: "complex128",
                 TensorProto.BFLOAT16: "bfloat16", TensorProto.FLOAT8E4M3FN: "float8_e4m3fn",
                 TensorProto.FLOAT8E4M3FNUZ: "float8_e4m3fnuz", TensorProto.FLOAT8E5M2: "float8_e5m2",
                 TensorProto.FLOAT8E5M2FNUZ: "float8_e5m2fnuz"}


def assert_matches_onnx(path, tmp):
    """keys lists the initializers as onnx reports them, and their values are onnx's, bit for bit."""
    inits, model = onnx_initializers(path)
    want = [{"name": i.name, "dtype": ONNX_TO_TORCH[i.data_type], "shape": list(i.dims)}
            for i in model.graph.initializer]
    assert run_json("keys", path) == want
    out = tmp / "from_onnx.pt"
    run("convert", path, out, check=0)
    got = torch.load(out, weights_only=True)
    assert list(got) == [n for n, _ in inits]
    for (name, arr), init in zip(inits, model.graph.initializer):
        t = got[name]
        assert list(t.shape) == list(arr.shape), name
        if init.data_type == TensorProto.BOOL:
            assert t.view(torch.uint8).numpy().tobytes() == arr.astype(np.uint8).tobytes(), name
        else:
            assert bits(t).numpy().tobytes() == np.ascontiguousarray(arr).tobytes(), name


def test_onnx_export_initializers_match_onnx(tmp):
    torch.manual_seed(0)
    path = tmp / "net.onnx"
    export(Net(), path)
    assert_matches_onnx(path, tmp)
    info = run_json("info", path)
    assert info["format"] == "onnx" and info["metadata"]["producer"].startswith("pytorch")


def typed_model(path, external=False):
    """Initializers in the typed fields (float_data, int32_data, int64_data, double_data, uint64_data), one per
    ONNX type torch has, plus raw_data ones."""
    rng = np.random.default_rng(0)
    inits = []
    for code, name in ONNX_TO_TORCH.items():
        shape = [2, 3]
        if code in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                    TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                    TensorProto.FLOAT8E5M2FNUZ):
            vals = rng.standard_normal(6).astype(np.float32).tolist()
        elif code in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
            vals = (rng.standard_normal(6) + 1j * rng.standard_normal(6)).tolist()
        elif code == TensorProto.BOOL:
            vals = [True, False, True, True, False, False]
        elif code in (TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64):
            vals = [-7, 0, 5, -128 if code == TensorProto.INT8 else -30000, 127, 1]
        else:
            vals = [0, 1, 2, 200, 255, 7] if code == TensorProto.UINT8 else [0, 1, 65535, 3, 9, 11]
            if code in (TensorProto.UINT32, TensorProto.UINT64):
                vals[2] = 2**32 - 1
        inits.append(helper.make_tensor(f"typed_{name}", code, shape, vals))
        inits.append(helper.make_tensor(f"raw_{name}", code, shape,
                                        numpy_helper.to_array(inits[-1]).tobytes(), raw=True))
    inits.append(helper.make_tensor("typed_scalar", TensorProto.INT64, [], [42]))
    inits.append(helper.make_tensor("typed_empty", TensorProto.FLOAT, [0, 4], []))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], initializer=inits)
    model = helper.make_model(graph, producer_name="ckpt-test")
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=0)
    else:
        onnx.save_model(model, str(path))


def test_onnx_typed_field_initializers_match_onnx(tmp):
    path = tmp / "typed.onnx"
    typed_model(path)
    m = onnx.load(str(path))
    assert any(len(i.int32_data) for i in m.graph.initializer) and any(len(i.float_data) for i in m.graph.initializer)
    assert_matches_onnx(path, tmp)


def test_onnx_external_data_matches_onnx(tmp):
    path = tmp / "ext.onnx"
    typed_model(path, external=True)
    m = onnx.load(str(path), load_external_data=False)
    # onnx moves raw_data out (typed fields stay in the model): both kinds are read here
    assert all(i.data_location == TensorProto.EXTERNAL for i in m.graph.initializer if i.name.startswith("raw_"))
    assert (tmp / "weights.bin").exists()
    assert_matches_onnx(path, tmp)


@pytest.mark.parametrize("defect", ["garbage", "external_outside", "external_missing", "raw_size", "string"])
def test_broken_onnx_exits_2(tmp, defect):
    path = tmp / "bad.onnx"
    if defect == "garbage":
        path.write_bytes(b"\x08\x07\x12\xff\xff\xff\xff\x0fnot a model")
    else:
        t = helper.make_tensor("w", TensorProto.FLOAT, [4], np.arange(4, dtype=np.float32).tobytes(), raw=True)
        if defect == "raw_size":
            t.raw_data = t.raw_data[:-4]
        elif defect == "string":
            t = helper.make_tensor("w", TensorProto.STRING, [1], [b"x"])
        elif defect.startswith("external"):
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            loc = "../w.bin" if defect == "external_outside" else "w.bin"
            t.external_data.add(key="location", value=loc)
            if defect == "external_outside":
                (tmp.parent / "w.bin").write_bytes(b"\0" * 16)
        g = helper.make_graph([], "g", [], [], initializer=[t])
        path.write_bytes(helper.make_model(g).SerializeToString())
    for cmd in ("keys", "info"):
        assert_clean_failure(run(cmd, path), path)


def best_and_export(tmp, same=True):
    torch.manual_seed(1)
    model = Net()
    best = tmp / "best.pt"
    torch.save({"epoch": 9, "model": model.state_dict()}, best)
    if not same:
        with torch.no_grad():
            model.fc.weight[0, 0] += 1
    onx = tmp / "best.onnx"
    export(model, onx)
    return best, onx


def test_onnx_export_carries_the_trained_weights(tmp):
    """What diff will compare, checked through convert: the export's initializers are best.pt's model."""
    best, onx = best_and_export(tmp)
    out = tmp / "exported.pt"
    run("convert", onx, out, check=0)
    sd = torch.load(best, weights_only=True)["model"]
    assert_same_tensors(torch.load(out, weights_only=True), sd)


def test_diff_best_pt_against_its_onnx_export(tmp):
    best, onx = best_and_export(tmp)
    run("diff", best, onx, "--values", check=0)
    other = tmp / "other"
    other.mkdir()
    best2, onx2 = best_and_export(other, same=False)
    r = run("diff", best2, onx2, "--values", "--json")
    assert r.returncode == 1
    assert [t["name"] for t in json.loads(r.stdout)["tensors"]] == ["fc.weight"]


def test_diff_map_pairs_renamed_onnx_names(tmp):
    best, onx = best_and_export(tmp)
    ddp = tmp / "ddp.pt"
    sd = torch.load(best, weights_only=True)["model"]
    torch.save({"model": collections.OrderedDict(("module." + k, v) for k, v in sd.items())}, ddp)
    assert run("diff", ddp, onx).returncode == 1
    run("diff", ddp, onx, "--values", "--map", "=module.", check=0)
    r = run("diff", ddp, onx, "--values", "--map", "=module.", "--map", "nothing.=x.", "--json", check=0)
    assert any("nothing.=x." in n for n in json.loads(r.stdout)["notes"])
    # renaming two of B's names into one is refused
    assert_clean_failure(run("diff", ddp, onx, "--map", "conv.=x.", "--map", "fc.=x."))


# ---- damage never crashes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["safetensors", "onnx", "index"])
def test_random_damage_never_crashes(tmp, kind):
    import random
    rnd = random.Random(11)
    if kind == "safetensors":
        src = tmp / "ok.safetensors"
        save_file(every_dtype_state_dict(5), src)
    elif kind == "onnx":
        src = tmp / "ok.onnx"
        typed_model(src)
    else:
        src = write_sharded(tmp, torch.load(FIXTURES / "sd-proto2.pt", weights_only=True), "safetensors", shards=2)
    data = src.read_bytes()
    for i in range(30):
        d = bytearray(data)
        if i % 3 == 0:
            d = d[:rnd.randrange(len(d))]
        else:
            for _ in range(rnd.randint(1, 6)):
                d[rnd.randrange(len(d))] = rnd.randrange(256)
        p = tmp / f"d{i}{src.suffix}" if kind != "index" else tmp / f"d{i}.index.json"
        p.write_bytes(bytes(d))
        for cmd in (("keys", p), ("convert", p, tmp / "out.pt")):
            r = run(*cmd)
            assert r.returncode in (0, 2), f"{cmd[0]} on damage #{i}: exit {r.returncode} {r.stderr[-500:]}"
            if r.returncode == 2:
                assert_clean_failure(r, p)
