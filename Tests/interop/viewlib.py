"""Torch's side of the view-coverage tests: every tensor an object holds, by path, and its state_dict view.

Walks what torch.load returns (nothing of ckpt's): each tensor once (by id(), as the pickle's memo makes shared
objects one object), depth first in insertion order, with the path ckpt's `keys --all` promises: dict keys, list
and tuple indices and attribute names joined by dots, the nn.Module bookkeeping levels `_parameters`, `_buffers`
and `_modules` left out, as state_dict names are formed; a tensor used as a dict key is `<key N>` (N: its entry's
position).
"""
import torch
import torch.nn as nn

BOOKKEEPING = {"_parameters", "_buffers", "_modules"}
ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.layout,
         torch.memory_format, torch.qscheme)


def tensor_walk(obj):
    """[(path, tensor)] for every tensor reachable from obj, each once."""
    out, seen = [], set()

    def visit(o, path):
        if isinstance(o, ATOMS) or id(o) in seen:
            return
        seen.add(id(o))
        if torch.is_tensor(o):
            out.append((".".join(path), o))
            return
        if isinstance(o, dict):
            for k, v in o.items():
                visit(v, path + (str(k),))
            for i, k in enumerate(o):  # a tensor (or an object holding one) used as a key: `<key N>`
                if not isinstance(k, ATOMS):
                    visit(k, path + (f"<key {i}>",))
            if hasattr(o, "__dict__"):  # OrderedDict._metadata, attributes of a dict subclass
                for k, v in vars(o).items():
                    visit(v, path + (k,))
            return
        if isinstance(o, (list, tuple, set, frozenset)):
            for i, v in enumerate(o):
                visit(v, path + (str(i),))
            return
        if hasattr(o, "__dict__") and not isinstance(o, type):
            for k, v in vars(o).items():
                visit(v, path if k in BOOKKEEPING else path + (k,))

    visit(obj, ())
    return out


def view_tensors(obj):
    """The tensors of the state_dict view of obj, as torch defines it: a module's state_dict(), a tensor itself, the
    tensors inside dicts, lists and tuples (through modules met there), nothing inside other objects."""
    out = []

    def visit(o, depth=0):
        if torch.is_tensor(o):
            out.append(o)
        elif isinstance(o, nn.Module):
            out.extend(o.state_dict(keep_vars=True).values())
        elif type(o) is dict or isinstance(o, (dict,)) and type(o).__module__ == "collections":
            for v in o.values():
                visit(v, depth + 1)
        elif type(o) in (list, tuple):
            for v in o:
                visit(v, depth + 1)

    visit(obj)
    return out


def missing_count(obj):
    """How many tensors obj holds (id-distinct) that its state_dict view does not show."""
    held = {id(t) for _, t in tensor_walk(obj)}
    shown = {id(t) for t in view_tensors(obj)}
    assert shown <= held
    return len(held - shown)


def dtype_name(t):
    return str(t.dtype).removeprefix("torch.")


def bits(t):
    t = t.detach()
    if t.is_quantized:
        return t.int_repr().contiguous().flatten().view(torch.uint8).numpy().tobytes()
    return t.contiguous().flatten().view(torch.uint8).numpy().tobytes()


def same_tensor(a, b, where, requires_grad=False):
    """b is a, bit for bit: dtype, shape and bytes; with requires_grad, also its requires_grad and Parameter-ness."""
    assert torch.is_tensor(b), f"{where}: expected a tensor, got {type(b).__name__}"
    assert a.dtype == b.dtype, f"{where}: dtype {b.dtype} != {a.dtype}"
    assert a.shape == b.shape, f"{where}: shape {tuple(b.shape)} != {tuple(a.shape)}"
    assert bits(a) == bits(b), f"{where}: values differ"
    if requires_grad:
        assert a.requires_grad == b.requires_grad, f"{where}: requires_grad {b.requires_grad} != {a.requires_grad}"
        assert isinstance(a, nn.Parameter) == isinstance(b, nn.Parameter), f"{where}: Parameter-ness differs"
