"""The errors the model package raises for input a user can fix (an unknown arch, a checkpoint
that does not fit). They live here so that ``model`` imports nothing from outside itself; the
entry scripts' error handling (``src/platform/errors.py``) builds on these classes and re-exports them."""

import reprlib

__all__ = ["UserError", "ConfigError", "CheckpointError", "first_line", "short_list", "short_quote"]


class UserError(Exception):
    """A failure caused by input the user can fix; the entry scripts print it as one line."""


class ConfigError(UserError):
    """An unknown key, a value of the wrong type or outside its range."""


class CheckpointError(UserError):
    """A checkpoint that is unreadable, unsafe, or does not fit the model."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception's text, for a one-line message: blank lines and
    MindSpore's rulers of dashes are skipped, a kernel-launch failure is preferred over the
    framework's preamble, and the exception's class name stands in for an empty text."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not set(ln.strip()) <= set("-")]
    kernel = [ln for ln in lines if ln.startswith("Launch kernel failed")]
    return (kernel or lines or [type(exc).__name__])[0][:limit]


def short_list(names, n: int = 6) -> str:
    """The first `n` of `names`, comma separated, and how many more: a list that fits one line."""
    names = list(names)
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n} more)" if len(names) > n else "")


#: Characters of a value that a message quotes (:func:`short_quote`).
QUOTE_LIMIT = 60

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 4, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = QUOTE_LIMIT + 2, QUOTE_LIMIT, QUOTE_LIMIT


def short_quote(value, limit: int = QUOTE_LIMIT) -> str:
    """`value` as a message quotes it: its ``repr`` cut to about `limit` characters, with the full
    length of a longer string (``'aaaa...' (1432 characters)``). Nested lists and mappings are cut
    level by level (``reprlib``), so the cost does not grow with the value: a value a user typed
    or a file held can be any size, a message is one line."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    text = _REPR.repr(value) if not isinstance(value, (str, bytes)) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit + 2 else text[:limit] + "..."
