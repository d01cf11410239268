"""The errors the model package raises for input a user can fix (an unknown arch, a checkpoint
that does not fit). They live here so that ``model`` imports nothing from outside itself; the
entry scripts' error handling (``src/errors.py``) builds on these classes and re-exports them."""

__all__ = ["UserError", "ConfigError", "CheckpointError"]


class UserError(Exception):
    """A failure caused by input the user can fix; the entry scripts print it as one line."""


class ConfigError(UserError):
    """An unknown key, a value of the wrong type or outside its range."""


class CheckpointError(UserError):
    """A checkpoint that is unreadable, unsafe, or does not fit the model."""
