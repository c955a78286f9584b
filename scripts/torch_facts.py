#!/usr/bin/env python3
"""torch's own facts about a checkpoint file, as JSON.

    python scripts/torch_facts.py FILE          # prints the JSON
    from torch_facts import facts; facts(path)  # same dict

Loads FILE with torch.load(weights_only=False) with scripts/fixturelib on sys.path (so pickled
YOLOv5 / Ultralytics modules resolve), and describes it:

{
  "file": "NAME.pt", "root": "<zip root folder>" (null for legacy/non-zip files),
  "records_in_zip": [zip entry names in order],
  "storages": number of <root>/data/N records, "data_bytes": sum of their sizes,
  "pickle": {"protocol": N, "globals": ["module.name", ... distinct, in order of first use]},
  "weights_only_loads": torch.load(weights_only=True) succeeds,
  "top_kind": "dict" | "state_dict" | "other",
  "records": {key: {"kind": ..., "type": "<python type>", ...}},
  "state_dicts": {key: [{"name", "dtype", "shape"}, ...]},
  "shared_storages": [[tensors viewing one storage, as "key/name" (or "key" / "name")], ...]  (groups > 1)
}

Record fields by kind:
  module: class, tensors, elements, bytes, storage_bytes (over module.state_dict())
  state_dict: tensors, elements, bytes, storage_bytes (all values are tensors)
  optimizer: same, over every tensor reachable in it ("state.0.momentum_buffer", ...)
  tensor: dtype, shape, stride, storage_offset, requires_grad, parameter, + the four counts
  dict / list / tuple: len, + the four counts when it holds tensors (dotted paths in state_dicts)
  scalar: value (ints outside int64 and nan/inf are given as strings: "1180591620717411303424", "nan")
  string: value;  array (numpy): dtype, shape, value (only for exactly one element, as float)
  none;  other: repr (sets, bytes, complex, ...)
A top-level state dict file has one record and one state_dicts entry under the key "".
dtype names are str(dtype) without "torch.".
"""

import collections
import io
import json
import math
import os
import pickle
import sys
import zipfile

_HERE = os.path.dirname(os.path.abspath(__file__))
_LIB = os.path.join(_HERE, "fixturelib")
if _LIB not in sys.path:
    sys.path.insert(0, _LIB)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def type_name(obj):
    t = type(obj)
    mod = t.__module__
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


# ---- pickle globals without executing anything ---------------------------------------------


class _Any:
    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def __call__(self, *args, **kwargs):
        return _Any()

    def append(self, x):
        pass

    def extend(self, xs):
        pass


class _GlobalsRecorder(pickle.Unpickler):
    def __init__(self, f, names):
        super().__init__(f)
        self.names = names

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full not in self.names:
            self.names.append(full)
        return type(name, (_Any,), {})

    def persistent_load(self, pid):
        return None


def _pickle_protocol(data):
    # PROTO opcode (0x80 N) opens protocol-2+ pickles
    return data[1] if len(data) > 1 and data[0] == 0x80 else None


def pickle_facts(path):
    """Protocol and distinct global names (module.name) of the main pickle, in order of first use."""
    names = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"][0]
            data = z.read(pkl)
        _GlobalsRecorder(io.BytesIO(data), names).load()
        return {"protocol": _pickle_protocol(data), "globals": names}
    # legacy: magic number, protocol version, sys_info, then the main pickle
    with open(path, "rb") as f:
        for _ in range(3):
            _GlobalsRecorder(f, []).load()
        start = f.tell()
        proto = f.read(2)
        f.seek(start)
        _GlobalsRecorder(f, names).load()
    return {"protocol": _pickle_protocol(proto), "globals": names}


# ---- tensors --------------------------------------------------------------------------------


def _storage_key(t):
    s = t.untyped_storage()
    return s._cdata, s.nbytes()


def tensor_stats(tensors):
    """tensors: list of (name, tensor). Counts as in the schema."""
    seen = {}
    for _, t in tensors:
        k, nb = _storage_key(t)
        seen[k] = nb
    return {
        "tensors": len(tensors),
        "elements": sum(t.numel() for _, t in tensors),
        "bytes": sum(t.numel() * t.element_size() for _, t in tensors),
        "storage_bytes": sum(seen.values()),
    }


def walk_tensors(obj, prefix=""):
    """(dotted path, tensor) for every tensor reachable through dicts/lists/tuples; modules via state_dict()."""
    out = []

    def join(p, k):
        return f"{p}.{k}" if p else str(k)

    def rec(o, p):
        if isinstance(o, torch.Tensor):
            out.append((p, o))
        elif isinstance(o, nn.Module):
            for k, v in o.state_dict().items():
                out.append((join(p, k), v))
        elif isinstance(o, dict):
            for k, v in o.items():
                rec(v, join(p, k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                rec(v, join(p, i))

    rec(obj, prefix)
    return out


def _is_state_dict(o):
    return isinstance(o, dict) and len(o) > 0 and all(isinstance(v, torch.Tensor) for v in o.values())


def _is_optimizer(o):
    return isinstance(o, dict) and "state" in o and "param_groups" in o


def _scalar_value(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        v = int(v)
        return v if INT64_MIN <= v <= INT64_MAX else str(v)
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def describe(value):
    """(record, tensor list) for one top-level value."""
    rec = {}
    tensors = []
    if isinstance(value, nn.Module):
        t = type(value)
        rec = {"kind": "module", "class": f"{t.__module__}.{t.__qualname__}"}
        tensors = list(value.state_dict().items())
        rec.update(tensor_stats(tensors))
    elif isinstance(value, torch.Tensor):
        rec = {
            "kind": "tensor",
            "dtype": dtype_name(value.dtype),
            "shape": list(value.shape),
            "stride": list(value.stride()),
            "storage_offset": value.storage_offset(),
            "requires_grad": value.requires_grad,
            "parameter": isinstance(value, nn.Parameter),
        }
        tensors = [("", value)]
        rec.update(tensor_stats(tensors))
    elif isinstance(value, np.ndarray):
        rec = {"kind": "array", "dtype": str(value.dtype), "shape": list(value.shape)}
        if value.size == 1:
            rec["value"] = _scalar_value(float(value.reshape(-1)[0]))
    elif _is_optimizer(value):
        rec = {"kind": "optimizer"}
        tensors = walk_tensors(value)
        rec.update(tensor_stats(tensors))
    elif _is_state_dict(value):
        rec = {"kind": "state_dict"}
        tensors = list(value.items())
        rec.update(tensor_stats(tensors))
    elif isinstance(value, (dict, list, tuple)):
        rec = {"kind": "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else "tuple",
               "len": len(value)}
        tensors = walk_tensors(value)
        if tensors:
            rec.update(tensor_stats(tensors))
    elif value is None:
        rec = {"kind": "none"}
    elif isinstance(value, str):
        rec = {"kind": "string", "value": value}
    elif isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        rec = {"kind": "scalar", "value": _scalar_value(value)}
    else:
        r = repr(value)
        rec = {"kind": "other", "repr": r if len(r) <= 200 else r[:200] + "..."}
    rec["type"] = type_name(value)
    return rec, tensors


def facts(path):
    path = os.fspath(path)
    out = {"file": os.path.basename(path)}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
        names = [i.filename for i in infos]
        root = names[0].split("/")[0]
        data = [i for i in infos if i.filename.startswith(root + "/data/")]
        out.update(root=root, records_in_zip=names, storages=len(data), data_bytes=sum(i.file_size for i in data))
    else:
        out.update(root=None, records_in_zip=[], storages=None, data_bytes=None)
    out["pickle"] = pickle_facts(path)
    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        torch.load(path, weights_only=True, map_location="cpu")
        out["weights_only_loads"] = True
    except Exception:
        out["weights_only_loads"] = False
    finally:
        torch.use_deterministic_algorithms(det)

    det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # else torch.load fails on float4_e2m1fn_x2 (fill_empty_deterministic_)
    try:
        obj = torch.load(path, weights_only=False, map_location="cpu")
    finally:
        torch.use_deterministic_algorithms(det)
    records, state_dicts, all_tensors = {}, {}, []
    if _is_state_dict(obj) and not _is_optimizer(obj):
        out["top_kind"] = "state_dict"
        items = [("", obj)]
    elif isinstance(obj, dict):
        out["top_kind"] = "dict"
        items = [(str(k), v) for k, v in obj.items()]
    else:
        out["top_kind"] = "other"
        items = [("", obj)]
    for key, value in items:
        rec, tensors = describe(value)
        records[key] = rec
        if tensors or rec["kind"] in ("module", "state_dict", "optimizer"):
            state_dicts[key] = [
                {"name": name if name else key, "dtype": dtype_name(t.dtype), "shape": list(t.shape)}
                for name, t in tensors
            ]
            all_tensors += [(f"{key}/{name}" if key and name else key or name, t) for name, t in tensors]
    groups = collections.OrderedDict()
    for name, t in all_tensors:
        groups.setdefault(_storage_key(t)[0], []).append(name)
    out["records"] = records
    out["state_dicts"] = state_dicts
    out["shared_storages"] = [g for g in groups.values() if len(g) > 1]
    return out


def dumps(f):
    return json.dumps(f, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: torch_facts.py FILE")
    sys.stdout.write(dumps(facts(sys.argv[1])))
