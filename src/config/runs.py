"""A new command line against the settings a run saved (its ``config.yaml``): ``train.py --resume``
refuses a change of a key that would change what the saved state means and names the others in
one warning (:attr:`.schema.Key.on_resume`); ``evl.py`` refuses a split other than the one the run
saved."""
import os
import sys

from ..platform.errors import ConfigError, UserError
from .schema import SCHEMA, SCHEMA_BY_NAME
from .strict_yaml import load_mapping, read_utf8
from .values import convert_key

__all__ = ["read_run_config", "check_resumed_config", "check_saved_split"]


def read_run_config(path):
    """The values a run saved in `path` (its ``config.yaml``), converted as the schema's keys; None when
    there is no such file or it cannot be read as one (a run of another version keeps its checks)."""
    if not os.path.isfile(path):
        return None
    try:
        data = load_mapping(read_utf8(path, "run config"), f"run config {path}")
        return {name: convert_key(SCHEMA_BY_NAME[name], value, path)
                for name, value in data.items() if name in SCHEMA_BY_NAME}
    except UserError:
        return None


def _text(value):
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(f"{x:g}" for x in value)
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _changed(cfg, saved, keys):
    """``[(key, saved value, new value)]`` of `keys` whose value in `cfg` differs from `saved`; a null
    num_classes (an image tree's, counted later from the data) is not compared."""
    return [(k, saved[k], getattr(cfg, k)) for k in keys if k in saved and not _same(saved[k], getattr(cfg, k))
            and not (k == "num_classes" and getattr(cfg, k) is None)]


def check_resumed_config(cfg, path):
    """``train.py --resume``: compare `cfg` with the run's saved config at `path`. A changed key whose
    ``on_resume`` is "refuse" is a ConfigError naming the key, the run's value and the new one; the
    changed "warn" keys are named in one ``warning:`` line on stderr (as the other warnings of the
    settings). Nothing to compare without a saved config."""
    saved = read_run_config(path)
    if saved is None:
        return
    refused = _changed(cfg, saved, [k.name for k in SCHEMA if k.on_resume == "refuse"])
    if refused:
        key, old, new = refused[0]
        raise ConfigError(f"resume: {key} {_text(new)} is not the run's {key} {_text(old)} ({path}); changing it on "
                          f"resume would change what the saved state means (weights, classes, split, step positions "
                          f"or what best.ckpt ranks): give --{key} {_text(old)}, or start a new run in another "
                          "save_checkpoint_path")
    warned = _changed(cfg, saved, [k.name for k in SCHEMA if k.on_resume == "warn"])
    if warned:
        changes = ", ".join(f"{k} {_text(new)} (was {_text(old)})" for k, old, new in warned)
        print(f"warning: resuming with settings that differ from the run's ({path}): {changes}", file=sys.stderr,
              flush=True)


def check_saved_split(cfg, path, lists_folder, seed_given=True):
    """evl.py with ``val_fraction``: the images evaluated are the validation list the run saved in
    `lists_folder`; ConfigError when ``val_fraction`` (or, when given, ``seed``) differs from the run's
    config at `path` (that list is not the split they ask for)."""
    saved = read_run_config(path)
    if saved is None:
        return
    changed = _changed(cfg, saved, ("val_fraction", "seed") if seed_given else ("val_fraction",))
    if changed:
        given = " ".join(f"--{k} {_text(new)}" for k, _, new in changed)
        runs = " ".join(f"--{k} {_text(old)}" for k, old, _ in changed)
        raise ConfigError(f"{given} asks for another split than the run's ({path}: {runs}), whose validation list "
                          f"in {lists_folder} is what evl.py evaluates; give {runs}, or val_data_path for other images")
