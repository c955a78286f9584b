"""ckpt average against a torch reference implementation of its rule: each floating tensor is
sum_i(w_i * x_i) / sum_i(w_i), in float64, summed from the first input to the last, then .to(dtype); integer and bool
tensors are the last input's; the rest of the output is what `ckpt strip LAST` writes."""
import hashlib
import zipfile
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from huggingface_hub import save_torch_state_dict
from safetensors.torch import save_file

from conftest import FIXTURES, assert_clean_failure, run, run_json
from viewlib import bits

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def torch_average(xs, ws=None):
    """The rule, as torch computes it with float64 tensors and separate operations (no fused multiply-add)."""
    ws = [1.0] * len(xs) if ws is None else [float(w) for w in ws]
    acc = ws[0] * xs[0].detach().double()
    for w, x in zip(ws[1:], xs[1:]):
        acc = acc + w * x.detach().double()
    return (acc / sum(ws)).to(xs[0].dtype)


def load(path, mmap=False, weights_only=False):
    return torch.load(path, weights_only=weights_only, mmap=mmap)


def average(tmp, inputs, *opts, name="avg.pt", check=0):
    out = tmp / name
    run("average", *inputs, out, *opts, check=check)
    return out


def weights_dict(obj):
    """name -> tensor of a weights record: a module's state_dict, or the dict itself."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(keep_vars=True)
    return obj


def check_weights(got, srcs, ws=None, ordered=True):
    """Every floating tensor of got is torch's average of srcs' tensors of that name, bit for bit; every other is the
    last input's (in the last input's order, when `ordered`: safetensors files keep no order torch shows)."""
    got, srcs = weights_dict(got), [weights_dict(s) for s in srcs]
    assert (list(got) if ordered else sorted(got)) == (list(srcs[-1]) if ordered else sorted(srcs[-1]))
    averaged = 0
    for k, t in got.items():
        xs = [s[k] for s in srcs]
        if xs[-1].dtype in FLOATING:
            want = torch_average(xs, ws)
            averaged += 1
        else:
            want = xs[-1]
        assert t.dtype == want.dtype and t.shape == want.shape, k
        assert bits(t) == bits(want), f"{k}: differs from torch's reference"
    return averaged


def sharing(d):
    groups = {}
    for k, t in weights_dict(d).items():
        groups.setdefault(t.untyped_storage().data_ptr(), []).append(k)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nothing_written(tmp, out):
    assert not out.exists(), "a refusal wrote the output"
    assert not [p for p in tmp.iterdir() if p.name.startswith(("avg", ".avg"))], list(tmp.iterdir())


# MARK: - state dicts made here


def make_sd(seed, n=4096):
    """Floating tensors of every kind average at several scales, integers, 0-dim tensors, views and shared storages."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    base = r(64) * 3
    wide = r(8, 16)
    sd = {
        "f32": r(n) * 1e3,
        "f32_small": r(n) * 1e-30,  # float32 subnormals after averaging
        "f16": (r(n) * 100).half(),
        "f16_tiny": (r(n) * 1e-5).half(),  # float16 subnormals
        "bf16": (r(n) * 1e20).bfloat16(),
        "f64": r(n).double() * 7,
        "scalar": r(()),  # 0-dim
        "scalar_half": r(()).half(),
        "count": torch.tensor(seed * 10 + 3),  # 0-dim int64 (num_batches_tracked)
        "index": torch.randint(0, 1000, (17,), generator=g, dtype=torch.int32),
        "mask": torch.rand(9, generator=g) > 0.5,
        "view_a": base[3:20],  # views of one storage, at offsets
        "view_b": base[10:50].view(8, 5),
        "base": base,
        "wide_t": wide.t(),  # a transposed view
        "wide": wide,
        "tied": None,
    }
    sd["tied"] = sd["f32"]  # two names, one tensor
    return sd


@pytest.fixture
def sds(tmp):
    paths, srcs = [], []
    for i in range(3):
        sd = make_sd(i)
        p = tmp / f"in{i}.pt"
        torch.save(sd, p)
        paths.append(p)
        srcs.append(torch.load(p))
    return paths, srcs


@pytest.mark.parametrize("weights", [None, "1,2,3.5", "0.1,0.2,0.7", "3e-7,1e9,0.5"], ids=str)
def test_every_float_tensor_is_torchs_average(tmp, sds, weights):
    paths, srcs = sds
    ws = None if weights is None else [float(w) for w in weights.split(",")]
    out = average(tmp, paths, *(["--weights", weights] if weights else []))
    for mmap in (False, True):
        got = load(out, mmap=mmap)
        assert check_weights(got, srcs, ws) == 14
        assert sharing(got) == sharing(srcs[-1]), "storage sharing changed"
        assert got["view_a"].storage_offset() == srcs[-1]["view_a"].storage_offset()
        assert got["wide_t"].stride() == srcs[-1]["wide_t"].stride()
    assert load(out, weights_only=True).averaged_from == [
        {"file": p.name, "sha256": sha(p), "weight": (1.0 if ws is None else ws[i])} for i, p in enumerate(paths)]


def test_two_inputs_and_many(tmp):
    srcs, paths = [], []
    for i in range(7):
        sd = {"w": torch.randn(300) * (i + 1), "h": torch.randn(300).half(), "n": torch.tensor(i)}
        paths.append(tmp / f"m{i}.pt")
        torch.save(sd, paths[-1])
        srcs.append(sd)
    check_weights(load(average(tmp, paths[:2], name="avg2.pt")), srcs[:2])
    check_weights(load(average(tmp, paths, name="avg7.pt")), srcs)


def next_up(t):
    """The next representable value of each element, in t's dtype."""
    return torch.nextafter(t, torch.full_like(t, math.inf))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_double_rounding_and_exact_halfway(tmp, dtype):
    """Averages that are float16/bfloat16 halfway points exactly (ties to even), and averages just past a halfway point
    by less than half a float32 step: torch's .to() rounds those through float32, to the halfway point, then to even;
    rounding float64 directly would round up. The data is checked to hold such cases, so the test can fail."""
    g = torch.Generator().manual_seed(5)
    h = (torch.randn(20000, generator=g) * 50).to(dtype)
    h = h[torch.isfinite(next_up(h))]
    a, b = h, next_up(h)
    torch.save({"x": a.clone()}, tmp / "a.pt")
    torch.save({"x": b.clone()}, tmp / "b.pt")
    mid64 = (a.double() + b.double()) / 2
    # Exact halfway: equal weights.
    out = average(tmp, [tmp / "a.pt", tmp / "b.pt"], name="avg-half.pt")
    got = load(out)["x"]
    assert bits(got) == bits(torch_average([a, b]))
    assert bool(((torch_average([a, b]).double() - mid64) != 0).any()), "no halfway case rounded"
    # Just past halfway: weights 1 and 1 + 2^-20.
    w = [1.0, 1.0 + 2.0 ** -20]
    out = average(tmp, [tmp / "a.pt", tmp / "b.pt"], "--weights", ",".join(repr(x) for x in w), name="avg-past.pt")
    got = load(out)["x"]
    want = torch_average([a, b], w)
    assert bits(got) == bits(want)
    acc = (w[0] * a.double() + w[1] * b.double()) / sum(w)
    assert bool(((acc != mid64) & (acc.float().double() == mid64)).any()), "no case where float32 reaches the halfway point"
    if dtype == torch.float16:
        direct = torch.from_numpy(acc.numpy().astype(np.float16))  # numpy rounds float64 to float16 directly
        assert bits(direct) != bits(want), "direct rounding agrees everywhere: the data tests nothing"


def test_float64_to_half_goes_through_float32_in_torch():
    """The fact the writer relies on, asked of torch: .to(float16/bfloat16) of a float64 tensor rounds through float32,
    in vectorized blocks and in the tail alike."""
    x = torch.full((37,), 1 + 2.0 ** -11 + 2.0 ** -40, dtype=torch.float64)
    assert bits(x.to(torch.float16)) == bits(x.float().to(torch.float16))
    assert x.to(torch.float16)[0].item() == 1.0  # directly it would be 1 + 2^-10
    y = torch.full((37,), 1 + 2.0 ** -8 + 2.0 ** -40, dtype=torch.float64)
    assert bits(y.to(torch.bfloat16)) == bits(y.float().to(torch.bfloat16))
    assert y.to(torch.bfloat16)[0].item() == 1.0


# MARK: - frameworks


def variants(tmp, fixture, count=3, perturb=("ema", "model")):
    """`count` copies of a framework checkpoint whose floating weights differ (seeded noise on each record named)."""
    paths, objs = [], []
    for i in range(count):
        x = torch.load(FIXTURES / fixture, weights_only=False)
        g = torch.Generator().manual_seed(100 + i)
        for rec in perturb:
            m = x.get(rec)
            if m is None:
                continue
            with torch.no_grad():
                for k, t in weights_dict(m).items():
                    if t.dtype in FLOATING:
                        t.add_((torch.randn(t.shape, generator=g) * 0.01).to(t.dtype))
                    elif t.dtype == torch.int64 and t.dim() == 0:
                        t.fill_(i + 7)  # num_batches_tracked differs: the output must hold the last's
        p = tmp / f"{fixture.removesuffix('.pt')}-{i}.pt"
        torch.save(x, p)
        paths.append(p)
        objs.append(torch.load(p, weights_only=False))
    return paths, objs


def same_except_weights(strip_out, avg_out, weights_record):
    """Every record of avg_out but the weights and averaged_from is the strip's output, as torch loads them."""
    assert [k for k in avg_out if k != "averaged_from"] == list(strip_out)
    for k in strip_out:
        a, b = strip_out[k], avg_out[k]
        if k == weights_record:
            assert type(a) is type(b)
            continue
        if torch.is_tensor(a) or isinstance(a, nn.Module):
            continue
        assert a == b if not isinstance(a, float) or not math.isnan(a) else math.isnan(b), k


@pytest.mark.parametrize("fixture", ["yolov5s-train.pt", "ultralytics-train.pt"])
def test_framework_checkpoints_with_use_ema(tmp, fixture):
    paths, objs = variants(tmp, fixture)
    out = average(tmp, paths, "--use-ema")
    stripped = tmp / "strip.pt"
    run("strip", paths[-1], stripped, "--use-ema", check=0)
    want = load(stripped)
    for mmap in (False, True):
        got = load(out, mmap=mmap)
        same_except_weights(want, got, "model")
        assert got["epoch"] == -1 and got["ema"] is None and got.get("optimizer") is None
        n = check_weights(got["model"], [o["ema"] for o in objs])
        assert n > 50
        # what strip keeps outside the state dict (YOLOv5's Detect.stride) is the last input's
        assert type(got["model"]) is type(want["model"])
    # the averaged model still runs
    got = load(out)
    got["model"].float().eval()(torch.zeros(1, 3, 64, 64))
    j = run_json("average", *paths, tmp / "avg2.pt", "--use-ema")
    assert j["weights_record"] == "model" and j["copied_from_last"]
    assert any(k.endswith("num_batches_tracked") for k in j["copied_from_last"])


def test_without_use_ema_the_model_is_averaged(tmp):
    paths, objs = variants(tmp, "yolov5s-train.pt")
    got = load(average(tmp, paths))
    check_weights(got["model"], [o["model"] for o in objs])


def test_state_dict_loads_weights_only(tmp):
    paths, objs = variants(tmp, "yolov5s-train.pt")
    out = average(tmp, paths, "--use-ema", "--state-dict")
    got = load(out, weights_only=True)
    check_weights(got["model"], [o["ema"].state_dict() for o in objs])
    assert got["averaged_from"] == [{"file": p.name, "sha256": sha(p), "weight": 1.0} for p in paths]
    got = load(out, weights_only=True, mmap=True)
    check_weights(got["model"], [o["ema"].state_dict() for o in objs])


def test_mixed_input_formats(tmp):
    """A torch zip, a legacy file, a safetensors file and a sharded safetensors folder, averaged together."""
    srcs = []
    for i in range(4):
        g = torch.Generator().manual_seed(40 + i)
        srcs.append({"a.weight": torch.randn(64, 32, generator=g), "a.bias": torch.randn(64, generator=g).half(),
                     "b.weight": torch.randn(10, 64, generator=g).bfloat16(), "b.steps": torch.tensor(i)})
    torch.save(srcs[0], tmp / "zip.pt")
    torch.save(srcs[1], tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(srcs[2], str(tmp / "st.safetensors"))
    (tmp / "sharded").mkdir()
    save_torch_state_dict(srcs[3], tmp / "sharded", max_shard_size=5000)
    assert (tmp / "sharded" / "model.safetensors.index.json").exists()
    inputs = [tmp / "zip.pt", tmp / "legacy.pt", tmp / "st.safetensors", tmp / "sharded"]
    out = average(tmp, inputs, "--weights", "1,2,3,4")
    for mmap in (False, True):
        check_weights(load(out, mmap=mmap), srcs, [1, 2, 3, 4], ordered=False)
    # and the other way round: a safetensors file last
    out = average(tmp, inputs[::-1], name="avg-rev.pt")
    check_weights(load(out), srcs[::-1], ordered=False)


# MARK: - the record and the summary


def test_averaged_from_record_in_a_file_of_records(tmp):
    paths, objs = variants(tmp, "yolov5s-train.pt", count=2)
    out = average(tmp, paths, "--weights", "0.25,0.75")
    got = load(out)
    assert got["averaged_from"] == [{"file": paths[0].name, "sha256": sha(paths[0]), "weight": 0.25},
                                    {"file": paths[1].name, "sha256": sha(paths[1]), "weight": 0.75}]
    assert list(got)[-1] == "averaged_from"
    # The digests come in after the storages are written, data.pkl rewritten in place: its checksum is its bytes',
    # it is still the archive's first record, and ckpt reads the file back.
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None
        assert z.namelist()[0].endswith("/data.pkl")
    assert "averaged_from" in run("info", out, check=0).stdout


def test_summary_text_json_and_dry_run(tmp, sds):
    paths, _ = sds
    out = tmp / "avg.pt"
    p = run("average", *paths, out, "--dry-run", check=0)
    assert not out.exists()
    assert p.stdout.startswith(f"would average 3 checkpoints into {out}")
    assert "nothing written" in p.stdout
    j = run_json("average", *paths, out, "--dry-run")
    assert not out.exists() and j["dry_run"] is True and j["output_bytes"] is None
    p = run("average", *paths, out, check=0)
    assert p.stdout.startswith(f"averaged 3 checkpoints into {out}")
    assert "integer and bool tensors (count, index, mask)" in p.stdout
    j = run_json("average", *paths, tmp / "avg-j.pt", "--weights", "1,1,2")
    assert j["averaged_tensors"] == 14 and j["copied_from_last"] == ["count", "index", "mask"]
    assert [i["sha256"] for i in j["inputs"]] == [sha(p) for p in paths]
    assert [i["weight"] for i in j["inputs"]] == [1, 1, 2]
    assert j["output_bytes"] == (tmp / "avg-j.pt").stat().st_size


def test_inputs_are_not_modified_and_output_may_replace_an_input(tmp, sds):
    paths, srcs = sds
    before = [sha(p) for p in paths]
    run("average", *paths, paths[0], check=0)
    assert [sha(p) for p in paths[1:]] == before[1:]
    check_weights(load(paths[0]), srcs)


# MARK: - refusals: one line naming the file, nothing written


def save_variant(tmp, name, edit):
    sd = make_sd(9)
    edit(sd)
    p = tmp / name
    torch.save(sd, p)
    return p


REFUSALS = {  # edit of the odd input, what the line says when it is compared with the last, the tensor named
    "missing name": (lambda sd: sd.pop("f16"), "no tensor 'f16'", "'f16'"),
    "extra name": (lambda sd: sd.update(extra=torch.zeros(3)), "'extra' is not in", "'extra'"),
    "renamed": (lambda sd: sd.update(f16x=sd.pop("f16")), "no tensor 'f16'", "'f16"),
    "shape": (lambda sd: sd.update(f32_small=sd["f32_small"][:-1].clone()), "'f32_small' has shape [4095]",
              "'f32_small'"),
    "dtype": (lambda sd: sd.update(f16=sd["f16"].bfloat16()), "'f16' is bfloat16", "'f16'"),
    "int dtype": (lambda sd: sd.update(count=sd["count"].int()), "'count' is int32", "'count'"),
    "shared differently": (lambda sd: sd.update(tied=sd["tied"].clone()), "share", "'tied'"),
    "view offset": (lambda sd: sd.update(view_a=torch.randn(64)[4:21]), "view at offset 4", "'view_a'"),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=str)
def test_mismatch_is_refused_naming_file_and_tensor(tmp, sds, case):
    paths, _ = sds
    edit, phrase, tensor = REFUSALS[case]
    bad = save_variant(tmp, "odd.pt", edit)
    # The odd input among others: it is named, as it differs from the last.
    p = run("average", paths[0], bad, paths[2], tmp / "avg.pt")
    assert_clean_failure(p)
    assert p.stderr.startswith(f"ckpt: {bad}: ") and phrase in p.stderr, p.stderr
    nothing_written(tmp, tmp / "avg.pt")
    # The odd input last: the first input differs from it, and is named.
    p = run("average", paths[0], paths[1], bad, tmp / "avg.pt")
    assert_clean_failure(p)
    assert p.stderr.startswith(f"ckpt: {paths[0]}: ") and tensor in p.stderr, p.stderr
    nothing_written(tmp, tmp / "avg.pt")


@pytest.mark.parametrize("weights,phrase", [
    ("0,1,1", "0 is not a positive finite number"),
    ("1,-2,1", "-2 is not a positive finite number"),
    ("1,nan,1", "nan is not a positive finite number"),
    ("1,1,inf", "inf is not a positive finite number"),
    ("1,1", "2 weights for 3 inputs"),
    ("1,1,1,1", "4 weights for 3 inputs"),
    ("1,x,1", "'x' is not a number"),
    ("1,,1", "'' is not a number"),
    ("1e308,1e308,1e308", "their sum is not finite"),
    ("-0,1,1", "0 is not"),
    ("1e-400,1,1", "0 is not"),  # rounds to zero
], ids=str)
def test_bad_weights_are_refused(tmp, sds, weights, phrase):
    paths, _ = sds
    p = run("average", *paths, tmp / "avg.pt", f"--weights={weights}")
    assert_clean_failure(p)
    assert p.stderr.startswith("ckpt: --weights: ") and phrase in p.stderr, p.stderr
    nothing_written(tmp, tmp / "avg.pt")


def test_one_input_is_refused(tmp, sds):
    paths, _ = sds
    p = run("average", paths[0], tmp / "avg.pt")
    assert p.returncode == 2 and not (tmp / "avg.pt").exists()


def test_unaveraged_float_kind_is_refused(tmp):
    for i in range(2):
        torch.save({"w": torch.randn(8), "f8": torch.randn(8).to(torch.float8_e4m3fn)}, tmp / f"f{i}.pt")
    p = run("average", tmp / "f0.pt", tmp / "f1.pt", tmp / "avg.pt")
    assert_clean_failure(p, tmp / "f1.pt")
    assert "'f8' is float8_e4m3fn" in p.stderr
    nothing_written(tmp, tmp / "avg.pt")


def test_a_corrupted_input_names_that_input(tmp, sds):
    paths, _ = sds
    raw = bytearray(paths[1].read_bytes())
    sd = torch.load(paths[1])
    needle = bits(sd["f32"])[:64]
    at = bytes(raw).index(needle)
    raw[at + 10] ^= 0xFF
    bad = tmp / "bad.pt"
    bad.write_bytes(bytes(raw))
    p = run("average", paths[0], bad, paths[2], tmp / "avg.pt")
    assert_clean_failure(p, bad)
    nothing_written(tmp, tmp / "avg.pt")


def test_a_failure_while_inputs_are_still_hashed_is_one_line(tmp):
    """The inputs are hashed on a second thread while their storages are averaged: a corrupted first storage ends the
    process while that thread is still reading the 48 MB inputs; the exit must still be the one line and code 2
    (libcrypto's exit-time cleanup under a running digest crashed it)."""
    g = torch.Generator().manual_seed(5)
    sd = {"a": torch.randn(64, generator=g), "w": torch.randn(12_000_000, generator=g)}  # "a" is averaged first
    paths = []
    for i in range(3):
        paths.append(tmp / f"in{i}.pt")
        torch.save({k: v + i for k, v in sd.items()}, paths[-1])
    raw = bytearray(paths[0].read_bytes())
    at = bytes(raw).index(bits(sd["a"][:16]))
    raw[at + 10] ^= 0xFF
    paths[0].write_bytes(bytes(raw))
    for _ in range(8):
        p = run("average", *paths, tmp / "avg.pt")
        assert_clean_failure(p, paths[0])
        nothing_written(tmp, tmp / "avg.pt")


# MARK: - streaming


def test_storages_larger_than_a_block(tmp):
    """Storages of more elements than the writer averages at once (a block is 256 Ki elements), with an odd count,
    so blocks and the last partial block are all reached."""
    srcs, paths = [], []
    for i in range(3):
        g = torch.Generator().manual_seed(70 + i)
        sd = {"big": torch.randn(600_001, generator=g) * 10, "bigh": torch.randn(300_007, generator=g).bfloat16(),
              "bigd": torch.randn(270_000, generator=g).double()}
        paths.append(tmp / f"big{i}.pt")
        torch.save(sd, paths[-1])
        srcs.append(sd)
    check_weights(load(average(tmp, paths, "--weights", "1,3,5")), srcs, [1, 3, 5])


def test_progress_on_a_terminal(tmp, sds):
    from test_scale import run_on_terminal

    paths, _ = sds
    code, shown = run_on_terminal("average", *paths, tmp / "avg.pt", env_extra={"CKPT_PROGRESS_DELAY": "0"})
    assert code == 0
    assert "\raverage: " in shown and "%)" in shown and shown.endswith("\r\x1b[K"), repr(shown)
    code, shown = run_on_terminal("average", "-q", *paths, tmp / "avg2.pt", env_extra={"CKPT_PROGRESS_DELAY": "0"})
    assert code == 0 and shown == "", repr(shown)


def flat_tensors(x, prefix=""):
    """path -> tensor for every tensor in nested dicts and modules' state dicts."""
    out = {}
    if torch.is_tensor(x):
        out[prefix] = x
    elif isinstance(x, nn.Module):
        for k, v in x.state_dict().items():
            out[f"{prefix}.{k}"] = v
    elif isinstance(x, dict):
        for k, v in x.items():
            out.update(flat_tensors(v, f"{prefix}.{k}"))
    return out


@pytest.mark.parametrize("folder", ["dcp-fsdp2-ws2", "dcp-fsdp2-bf16-ws4", "zero2"])
def test_distributed_folders_as_inputs(tmp, folder):
    """A distributed checkpoint folder averaged with itself and with what strip writes of it: identical inputs average
    to themselves exactly (2x, 3x and the division are exact in float64), so OUT is strip's output of the folder.
    A folder is many files: averaged_from gives it no sha256."""
    path = FIXTURES / "distributed" / folder
    stripped = tmp / "strip.pt"
    run("strip", path, stripped, check=0)
    want = flat_tensors(load(stripped))
    assert want
    for inputs in ([path, path], [stripped, path, path]):
        out = average(tmp, inputs)
        got = load(out)
        rec = got.pop("averaged_from", None) if isinstance(got, dict) else None
        rec = rec if rec is not None else getattr(got, "averaged_from", None)
        flat = flat_tensors(got)
        assert sorted(flat) == sorted(want)
        for k in want:
            assert bits(flat[k]) == bits(want[k]) and flat[k].dtype == want[k].dtype, k
        assert [r["sha256"] for r in rec] == [None if p == path else sha(p) for p in inputs]
