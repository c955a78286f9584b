"""Python's own conversion of the values torch.load(weights_only=True) refuses into plain data: the oracle of ckpt's
plain-data table (README, `strip --state-dict`; Sources/CkptCore/Surgery/PlainData.swift). Every rule is what Python or
the value's library gives: str(path), vars(ns), OmegaConf.to_container(cfg), arr.tolist(), x.item(), e.value,
x.isoformat(), m.state_dict(), vars(obj) with its class's qualified name."""
import argparse
import collections
import datetime
import enum
import pathlib
import types

import numpy as np
import torch

try:
    from omegaconf import DictConfig, ListConfig, OmegaConf
except ImportError:  # omegaconf not installed: its rule is not needed
    DictConfig = ListConfig = OmegaConf = None


def qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def python_plain(x):
    """x with every value weights_only refuses made plain, as Python itself converts it."""
    if torch.is_tensor(x):
        return x
    if isinstance(x, torch.nn.Module):
        return x.state_dict()
    if isinstance(x, pathlib.PurePath):
        return str(x)
    if isinstance(x, (argparse.Namespace, types.SimpleNamespace)):
        return {k: python_plain(v) for k, v in vars(x).items()}
    if DictConfig is not None and isinstance(x, (DictConfig, ListConfig)):
        return python_plain(OmegaConf.to_container(x, resolve=False))
    if isinstance(x, np.ndarray):
        # what torch.from_numpy takes (in native byte order); numpy's other dtypes (uint16-64, strings, objects) as lists
        native = x.dtype.kind in "fibc" or x.dtype == np.uint8
        if native and x.dtype.itemsize <= 16 and x.dtype not in (np.uint16, np.uint32, np.uint64, np.float128):
            return torch.from_numpy(np.array(x, dtype=x.dtype.newbyteorder("=")))
        return python_plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, enum.Enum):
        return python_plain(x.value)
    if isinstance(x, (datetime.datetime, datetime.date, datetime.time)):
        return x.isoformat()
    if isinstance(x, (set, frozenset)):
        return {python_plain(v) for v in x}
    if isinstance(x, collections.OrderedDict):
        return collections.OrderedDict((python_plain(k), python_plain(v)) for k, v in x.items())
    if isinstance(x, dict):
        return {python_plain(k): python_plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [python_plain(v) for v in x]
    if isinstance(x, tuple):
        return tuple(python_plain(v) for v in x)
    if isinstance(x, (type, types.FunctionType, types.BuiltinFunctionType)):
        return qualified(x)
    if isinstance(x, (bool, int, float, complex, str, bytes, bytearray, type(None))):
        return x
    if hasattr(x, "__dict__") or hasattr(type(x), "__slots__"):
        # the attributes pickle saves: __getstate__ (a dict, or (dict or None, slots dict))
        state = x.__getstate__()
        attrs = {}
        for part in state if isinstance(state, tuple) else (state,):
            attrs.update(part or {})
        return {"__class__": qualified(type(x)), **{k: python_plain(v) for k, v in attrs.items()}}
    raise TypeError(f"no Python conversion for {type(x)}")


# What torch keeps in every module's __dict__, by torch's own word: never part of a model's description.
TORCH_MODULE_KEYS = frozenset(vars(torch.nn.Module()))
# Tensor attributes carried as numbers by strip --state-dict: at most this many elements, of a dtype with Python numbers.
MAX_DESCRIBED_ELEMENTS = 1 << 16
NUMBER_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16,
                 torch.uint16, torch.int32, torch.uint32, torch.int64, torch.bool}


def holds_model_part(x, seen=None):
    """Whether a value holds a module or a tensor anywhere inside (containers, objects' attributes)."""
    seen = set() if seen is None else seen
    if id(x) in seen:
        return False
    seen.add(id(x))
    if torch.is_tensor(x) or isinstance(x, torch.nn.Module):
        return True
    if isinstance(x, dict):
        return any(holds_model_part(k, seen) or holds_model_part(v, seen) for k, v in x.items())
    if isinstance(x, (list, tuple, set, frozenset)):
        return any(holds_model_part(v, seen) for v in x)
    if hasattr(x, "__dict__") and not isinstance(x, type):
        return any(holds_model_part(v, seen) for v in vars(x).values())
    return False


def python_description(module):
    """A module's description as strip --state-dict writes it in `model_config`: every attribute of its __dict__ that
    torch does not keep in every module, made plain; a small tensor as tensor.tolist(); values holding a module or a
    tensor (part of the model's state), and larger tensors, left out."""
    out = {}
    for k, v in vars(module).items():
        if k in TORCH_MODULE_KEYS:
            continue
        if torch.is_tensor(v):
            if v.numel() <= MAX_DESCRIBED_ELEMENTS and v.dtype in NUMBER_DTYPES:
                out[k] = v.tolist()
        elif not holds_model_part(v):
            out[k] = python_plain(v)
    return out


def python_model_config(weights, name=None):
    """The `model_config` record strip --state-dict adds for a weights value (name: its record, None for the whole
    file), or None when it adds none: the module's description when the value is a module, else one description per
    module the value's dicts, lists and tuples hold (not an optimizer state's), keyed by dotted path."""
    if isinstance(weights, torch.nn.Module):
        return python_description(weights) or None
    found = []

    def walk(x, path):
        if isinstance(x, torch.nn.Module):
            found.append((path, x))
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}.{i}" if path else str(i))
        elif isinstance(x, dict) and not ("state" in x and "param_groups" in x):
            for k, v in x.items():
                if isinstance(k, (str, int)) and not isinstance(k, bool):
                    walk(v, f"{path}.{k}" if path else str(k))

    walk(weights, name)
    described = {p: python_description(m) for p, m in found}
    return {p: d for p, d in described.items() if d} or None


def bits(t):
    """A tensor's bytes (a quantized one: its integer representation and its dequantized values)."""
    if t.is_quantized:
        return bits(t.int_repr()) + bits(t.dequantize())
    return t.detach().contiguous().flatten().view(torch.uint8).numpy().tobytes()


def same_plain(want, got, where="(top level)"):
    """Equal values of the same types, all the way down; tensors bit for bit (dtype, shape, bytes)."""
    if torch.is_tensor(want):
        assert torch.is_tensor(got), f"{where}: {type(got)} is not a tensor"
        assert want.dtype == got.dtype and want.shape == got.shape, f"{where}: {got.dtype}{tuple(got.shape)}"
        assert bits(want) == bits(got), f"{where}: tensor bytes differ"
        return
    assert type(got) is type(want), f"{where}: {type(got).__name__} {got!r} != {type(want).__name__} {want!r}"
    if isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            same_plain(want[k], got[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (a, b) in enumerate(zip(want, got)):
            same_plain(a, b, f"{where}.{i}")
    elif isinstance(want, float) and want != want:
        assert got != got, f"{where}: {got!r} is not nan"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
