from types import SimpleNamespace


class IterableSimpleNamespace(SimpleNamespace):
    """Ultralytics' config namespace (pickled on DetectionModel.args by the trainer)."""

    def __iter__(self):
        return iter(vars(self).items())

    def __str__(self):
        return "\n".join(f"{k}={v}" for k, v in vars(self).items())

    def __getattr__(self, attr):
        name = self.__class__.__name__
        raise AttributeError(f"'{name}' object has no attribute '{attr}'.")

    def get(self, key, default=None):
        return getattr(self, key, default)
