"""Values of the schema's keys: conversion of a YAML value or a command-line word to the key's type
with validation (one ``error:`` line naming the source, key, value and what was expected), and the
resolved :class:`Config`."""
import dataclasses
import difflib
import re

import yaml

from ..platform.errors import ConfigError, short_quote
from .schema import SCHEMA_BY_NAME, epoch_seed, format_number
from .strict_yaml import load_value

__all__ = ["Config", "convert_value", "convert_key", "expected_values", "unknown_key", "epoch_config",
           "NULL_WORDS", "TRUE_WORDS", "FALSE_WORDS"]


# --------------------------------------------------------------------------------------------
# Conversion and validation of single values
# --------------------------------------------------------------------------------------------
NULL_WORDS = ("null", "none", "~")


TRUE_WORDS = ("true", "yes", "on", "1")


FALSE_WORDS = ("false", "no", "off", "0")


def expected_values(key):
    if key.choices:
        exp = "one of " + ", ".join(key.choices)
    elif key.type in ("floats", "ints"):
        what = "integers" if key.type == "ints" else "numbers"
        exp = f"a list of {key.length} {what}" if key.length else f"a comma-separated list of {what}"
        if getattr(key.check, "bounds", None):
            exp += f" {key.check.bounds}"
    else:
        exp = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[key.type]
        if key.min is not None and key.max is not None:
            exp += f" in [{format_number(key.min)}, {format_number(key.max)}]"
        elif getattr(key.check, "bounds", None):
            exp += f" {key.check.bounds}"
        elif key.min is not None:
            exp += f" >= {format_number(key.min)}"
    return exp + (" or null" if key.nullable else "")


class _Invalid(ValueError):
    """A value that does not convert; ``why`` replaces the key's usual expectation when given."""

    def __init__(self, why=None):
        super().__init__(why)
        self.why = why


def _to_bool(key, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise _Invalid()


def _to_int(key, value):
    if isinstance(value, bool):
        raise _Invalid()
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        try:
            return int(value)
        except ValueError:   # more digits than Python converts (4300): far outside every bound
            raise _Invalid() from None
    raise _Invalid()


def _finite(value, why):
    """`value` as a finite float; _Invalid(`why`) for NaN or infinity, _Invalid() for a non-number."""
    if isinstance(value, bool):
        raise _Invalid()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise _Invalid() from None
    if out != out or out in (float("inf"), float("-inf")):
        raise _Invalid(why)
    return out


def _to_float(key, value):
    return _finite(value, "a finite number")


def _to_str(key, value):
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _Invalid()
    out = str(value)
    if key.choices:
        match = [c for c in key.choices if c.lower() == out.strip().lower()]
        if not match:
            raise _Invalid()
        out = match[0]
    return out


def _to_list(key, value):
    items = value
    if isinstance(value, str):
        text = value.strip()
        try:
            items = load_value(text) if text.startswith("[") else [s for s in text.split(",") if s.strip()]
        except yaml.YAMLError:
            raise _Invalid() from None
    if not isinstance(items, (list, tuple)) or not items or (key.length is not None and len(items) != key.length):
        raise _Invalid()
    out = []
    for x in items:
        v = _finite(x, "finite numbers")
        if key.type == "ints":
            if not v.is_integer():
                raise _Invalid()
            v = int(v)
        out.append(v)
    return out


_CONVERTERS = {"bool": _to_bool, "int": _to_int, "float": _to_float, "str": _to_str, "floats": _to_list,
               "ints": _to_list}


def _check_bounds(key, out):
    """The explanation when a number is outside the key's [min, max], else None."""
    if key.type not in ("int", "float"):
        return None
    lo, hi = key.min, key.max
    if lo is not None and out < lo:
        return f"an integer >= {format_number(lo)}" if key.type == "int" else f"a value >= {format_number(lo)}"
    if hi is not None and out > hi:
        return f"a value in [{format_number(lo)}, {format_number(hi)}]" if lo is not None else \
            f"a value <= {format_number(hi)}"
    return None


def convert_key(key, value, source):
    """Convert `value` (from YAML or a CLI string) to the key's type and validate it (type, bounds,
    the key's own check); ConfigError from `source` naming the key, the value and what was expected."""
    if value is None or (key.nullable and isinstance(value, str) and value.strip().lower() in NULL_WORDS):
        if key.nullable:
            return None
        why = None
    else:
        try:
            out = _CONVERTERS[key.type](key, value)
            why = _check_bounds(key, out) or (key.check(out) if key.check is not None else None)
        except _Invalid as exc:
            why = exc.why or expected_values(key)
        else:
            if why is None:
                return out
    raise ConfigError(f"{source}: invalid value {short_quote(value)} for '{key.label}': expected "
                      f"{why or expected_values(key)}")


def convert_value(name, value, source, shown_as=None):
    """`value` converted and validated as the schema's key `name` (its type, bounds and check);
    ConfigError from `source` naming the key (or `shown_as`, e.g. another script's flag)."""
    key = SCHEMA_BY_NAME[name]
    if shown_as:
        key = dataclasses.replace(key, name=shown_as)
    return convert_key(key, value, source)


def unknown_key(name, source, keys=None):
    close = difflib.get_close_matches(str(name), keys or SCHEMA_BY_NAME, n=1, cutoff=0.6) \
        if len(str(name)) <= 100 else []
    hint = f"; did you mean '{close[0]}'?" if close else "; -h lists the keys"
    shown = f"'{name}'" if isinstance(name, str) and len(name) <= 60 else short_quote(name)
    return ConfigError(f"{source}: unknown key {shown}{hint}")


# --------------------------------------------------------------------------------------------
# Config object
# --------------------------------------------------------------------------------------------
class Config:
    """Resolved configuration with attribute access (``cfg.batch_size``); keys are those of SCHEMA."""

    def __init__(self, values, command_line_keys=()):
        object.__setattr__(self, "_values", dict(values))
        #: The keys given on the command line (``--key value``): a value read from a checkpoint's
        #: saved config replaces the others, never these.
        object.__setattr__(self, "command_line_keys", frozenset(command_line_keys))

    def __getattr__(self, name):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        close = difflib.get_close_matches(name, values, n=1)
        raise AttributeError(f"config has no key '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""))

    def __setattr__(self, name, value):
        if name not in self._values:
            raise unknown_key(name, "config")
        self._values[name] = value

    def __contains__(self, name):
        return name in self._values

    def __repr__(self):
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def to_dict(self):
        """A plain dict copy (lists copied), in schema order."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._values.items()}

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path):
        """Write the resolved config as YAML to `path` atomically (:func:`fileio.atomic_output`)."""
        from ..platform.fileio import atomic_output
        with atomic_output(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_yaml())
        return path



def epoch_config(cfg, epoch):
    """The config of one epoch's training pipeline: the seed moves with the epoch
    (:func:`.schema.epoch_seed`), so the shuffle and augmentation of epoch E are the same in a
    resumed run as in an uninterrupted one."""
    d = cfg.to_dict()
    d["seed"] = epoch_seed(cfg.seed, epoch)   # bounded by the schema: < 2**32 for every epoch
    return Config(d)
