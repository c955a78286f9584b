"""Mini stand-in for the `ultralytics` package (only what pickled checkpoints reference)."""

__version__ = "8.3.0"
