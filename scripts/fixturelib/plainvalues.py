"""Classes of the values training scripts keep beside their weights that torch.load(weights_only=True) refuses:
Tests/interop/test_weights_only_output.py pickles them with torch.save and checks what `ckpt strip --state-dict` makes
of them against Python's own conversion (Tests/interop/plainlib.py)."""
import dataclasses
import enum

import torch


class Color(enum.Enum):
    RED = 1
    GREEN = "green"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class RunInfo:
    """A plain class: its pickled state is its __dict__."""

    def __init__(self, name, steps, extra=None):
        self.name = name
        self.steps = steps
        self.extra = extra


class Slotted:
    """A class with __slots__: pickled state (None, {slot: value})."""
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a = a
        self.b = b


class Tagged(dict):
    """A dict subclass (SETITEMS onto it, no attributes)."""


def schedule(step):
    """A function kept as a value (a class or function reference)."""
    return step


def make_opaque(x, extra):
    return Opaque(x)


class Opaque:
    """A custom __reduce__: a call of a function with arguments, which no table can turn into plain data."""

    def __init__(self, x):
        self.x = x

    def __reduce__(self):
        return (make_opaque, (self.x, "extra"))


class Marked(torch.Tensor):
    """A tensor subclass: torch pickles it as torch._tensor._rebuild_from_type_v2 of this class, which weights_only
    does not load and no table converts (`torch.ones(2).as_subclass(Marked)`)."""


@dataclasses.dataclass
class Optim:
    """A structured config's schema (omegaconf.OmegaConf.structured(Optim))."""
    lr: float = 0.01
    betas: list = dataclasses.field(default_factory=lambda: [0.9, 0.999])
