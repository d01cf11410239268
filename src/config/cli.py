"""The entry scripts' command line: ``config.yaml`` (or ``--config FILE``), then ``--key value``
flags, plus each script's own options declared with :func:`.schema.option`; the checks that involve
several keys; ``-h`` and the README's key table.

Precedence, lowest first: the defaults in :data:`.schema.SCHEMA` < the YAML file given by
``--config`` (default: ``config.yaml`` at the top of the repository) < the demo layer
(:data:`.presets.DEMO_OVERRIDES`, when ``demo`` is on) < ``--key value`` flags. Unknown keys and
invalid values raise ConfigError naming the key and the value.

On the command line booleans are ``true``/``false`` (a bare ``--flag`` means true), ``null``
(or ``none``) is None, and lists are comma separated (``--crop_scale 0.5,1``), space separated
(``--blocks 2 4 2``) or YAML (``--crop_scale [0.5,1]``).
"""
import importlib.util
import os
import sys
from dataclasses import dataclass

from .. import REPO_ROOT
from ..data.catalog import CIFAR, NUM_CLASSES, data_format
from ..platform.errors import ConfigError, short_quote
from ..platform.bounds import check_resize
from .presets import DEMO_OVERRIDES, RECIPE_KEYS, apply_dataset_defaults, recipe
from .schema import SCHEMA, SCHEMA_BY_NAME, SCRIPTS, EPOCH_SEED_STRIDE, SEED_LIMIT, check_path, epoch_seed, option
from .strict_yaml import load_mapping, read_utf8
from .values import Config, FALSE_WORDS, TRUE_WORDS, convert_key, expected_values, unknown_key

__all__ = ["load_config", "parse_command_line", "CommandLine", "cap_workers", "path_arg",
           "config_markdown", "DEFAULT_CONFIG_FILE", "COMMON_OPTIONS"]

#: Options every entry script takes besides the config keys.
COMMON_OPTIONS = [option("verbose", False, "bool", "Also show MindSpore's own log lines (its C++ warnings); "
                         "without it they are kept to errors (or set GLOG_v yourself).")]


#: ``config.yaml`` at the top of the repository, next to the entry scripts.
DEFAULT_CONFIG_FILE = os.path.join(REPO_ROOT, "config.yaml")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _read_yaml(path):
    """The mapping of a config file: UTF-8, valid YAML, no key given twice (ConfigError otherwise)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; expected a YAML file (see --config)")
    return load_mapping(read_utf8(path, "config file"), f"config file {path}")


def _parse_cli(argv, keys, positionals=False):
    """Split argv into ``(config_file or None, {key: raw string}, [positional arguments])``;
    ``-h`` prints the keys. `keys` maps names to :class:`Key` (the schema and the script's options).

    A ``--key`` without ``=`` takes the next argument as its value, except a boolean key, which
    takes it only when it is a boolean word (a bare ``--flag`` means true). List keys also take
    space-separated values (``--blocks 2 4 2``) unless the script takes positional arguments (then
    one value: ``--blocks 2,4,2``). With `positionals`, other arguments (and everything after a
    lone ``--``) are returned as positional; without, they are an error. A key given more than
    once keeps every value, so that the caller can validate each and then refuse the repetition
    naming both."""
    config_file, raw, paths = None, {}, []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            print(_help_text(keys))
            sys.exit(0)
        if positionals and tok == "--":
            paths += argv[i + 1:]
            break
        if not tok.startswith("--") or tok == "--":
            if positionals:
                paths.append(tok)
                i += 1
                continue
            raise ConfigError(f"command line: unexpected argument {short_quote(tok)}; expected --key value")
        name, eq, val = tok[2:].partition("=")
        name = name.replace("-", "_")
        key = keys.get(name)
        if key is None and name != "config":
            raise unknown_key(name, "command line", keys)
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            is_bool = key is not None and key.type == "bool"
            takes_next = nxt is not None and not nxt.startswith("--") and (
                not is_bool or not positionals or nxt.strip().lower() in TRUE_WORDS + FALSE_WORDS)
            if not takes_next:
                if not is_bool:
                    raise ConfigError(f"command line: --{name} needs a value")
                val = "true"
            else:
                val = nxt
                i += 1
                if key is not None and key.type in ("floats", "ints") and not positionals:
                    extra = []
                    while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                        extra.append(argv[i + 1])
                        i += 1
                    if extra:
                        val = ",".join([val] + extra)
        i += 1
        if name == "config":
            if config_file is not None:
                raise ConfigError(f"command line: --config is given twice ({short_quote(config_file)} and {short_quote(val)}); "
                                  "give one config file")
            config_file = val
        else:
            raw.setdefault(name, []).append(val)
    return config_file, raw, paths


def load_config(argv=None, apply_defaults=True, script=None):
    """Build the Config: schema defaults < YAML (``--config FILE``) < the demo layer
    (:data:`DEMO_OVERRIDES`, when ``demo`` is on) < ``--key value`` flags.

    `argv` defaults to ``sys.argv[1:]``. With `apply_defaults`, null per-dataset keys are filled
    by :func:`apply_dataset_defaults`. Raises ConfigError for unknown keys and invalid values, and
    (with `script`) for a flag that the script does not read.
    """
    return parse_command_line(argv, apply_defaults=apply_defaults, script=script).cfg


@dataclass
class CommandLine:
    """An entry script's command line: the run's config, the script's own options (a Config of the
    declared :func:`option` keys) and the positional arguments."""
    cfg: "Config"
    options: "Config"
    positionals: list


def parse_command_line(argv=None, options=(), positionals=False, apply_defaults=True, script=None) -> CommandLine:
    """The one command-line parser of the entry scripts: config keys as in :func:`load_config`,
    plus the script's own `options` (declared with :func:`option`; an option may take a config
    key's name, and then the command line sets the option) and, with `positionals`, the arguments
    that are not ``--key value`` pairs (e.g. image paths).

    `script` (``train.py``, ``evl.py``, ...): a config key given on the command line that the script
    does not read is refused or named (:func:`_check_foreign_keys`); the config file may hold every key
    (one file serves all the scripts). The checks of training's own keys run for train.py (and without
    `script`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # An option may take a config key's name (export.py's --batch_size): on that script's command
    # line the option is meant, and the config key keeps its value from the config file.
    options = list(options) + [k for k in COMMON_OPTIONS if k.name not in {o.name for o in options}]
    own = {k.name: k for k in options}
    config_file, cli, paths = _parse_cli(argv, {**SCHEMA_BY_NAME, **own}, positionals)
    values = {k.name: (list(k.default) if isinstance(k.default, list) else k.default) for k in SCHEMA}

    path = config_file or DEFAULT_CONFIG_FILE
    if config_file is not None or os.path.isfile(path):
        for name, val in _read_yaml(path).items():
            if name not in SCHEMA_BY_NAME:
                raise unknown_key(str(name), f"config file {path}")
            values[name] = convert_key(SCHEMA_BY_NAME[name], val, f"config file {path}")
    demo_values = cli.get("demo", [values["demo"]])
    if convert_key(SCHEMA_BY_NAME["demo"], demo_values[-1], "command line"):
        values.update(DEMO_OVERRIDES)
    opts = {k.name: k.default for k in options}
    for name, vals in cli.items():
        for val in vals:
            if name in own:
                opts[name] = convert_key(own[name], val, "command line")
            else:
                values[name] = convert_key(SCHEMA_BY_NAME[name], val, "command line")
    _check_foreign_keys(script, [n for n in cli if n not in own])
    for name, vals in cli.items():
        if len(vals) > 1:
            shown = " and ".join(repr(v) for v in vals)
            times = "twice" if len(vals) == 2 else f"{len(vals)} times"
            raise ConfigError(f"command line: --{name} is given {times} ({shown}); give it once")

    cfg = Config(values, command_line_keys=[n for n in cli if n not in own])
    _check_data_keys(cfg)
    given = _chosen_recipe_keys(values, set(cli))
    if apply_defaults:
        apply_dataset_defaults(cfg)
    _check_cross(cfg)
    if script in (None, "train.py") and apply_defaults:
        _check_training(cfg, given)
        _warn_inert(cfg, set(cli))
    cap_workers(cfg)
    return CommandLine(cfg, Config(opts), paths)


def _check_foreign_keys(script, names):
    """Config keys given on the command line of `script` that it does not read (:attr:`.schema.Key.scripts`):
    train.py refuses an evaluation key (``--use_ema``, ``--checkpoint_path`` ask for what training does
    not do); evl.py, infer.py and export.py name the training keys they leave unread in one warning
    line (the training command line reused for an evaluation changes nothing of it)."""
    foreign = [n for n in names if script and n in SCHEMA_BY_NAME and script not in SCHEMA_BY_NAME[n].scripts]
    if not foreign:
        return
    if script == "train.py":
        key = SCHEMA_BY_NAME[foreign[0]]
        raise ConfigError(f"command line: --{key.name} is not read by train.py (only by {', '.join(key.scripts)}); "
                          "leave it out")
    print(f"warning: {script} does not read " + ", ".join(f"--{n}" for n in foreign)
          + " (keys of " + ", ".join(s for s in SCRIPTS if any(s in SCHEMA_BY_NAME[n].scripts for n in foreign))
          + "); "
          "they have no effect here", file=sys.stderr, flush=True)


def _check_data_keys(cfg):
    """The data keys that go together, before the dataset's defaults fill them."""
    if cfg.val_fraction is not None and data_format(cfg.dataset_choose) != "imagefolder":
        raise ConfigError(f"val_fraction {cfg.val_fraction:g} splits an image tree; dataset_choose "
                          f"{cfg.dataset_choose} has its own validation split (set val_fraction: null)")
    if cfg.val_fraction is not None and cfg.val_data_path is not None:
        raise ConfigError(f"val_fraction {cfg.val_fraction:g} takes the validation images from train_data_path, "
                          f"and val_data_path is {cfg.val_data_path}; give one of them")


def _check_cross(cfg):
    """Checks that involve more than one key or the environment."""
    topo = {k: getattr(cfg, k) for k in ("blocks", "dims", "mlp_ratios") if getattr(cfg, k) is not None}
    if len({len(v) for v in topo.values()}) > 1:
        raise ConfigError("blocks, dims and mlp_ratios must have the same length, got "
                          + ", ".join(f"{k} {v}" for k, v in topo.items()))
    smallest = NUM_CLASSES[cfg.dataset_choose] if cfg.dataset_choose in CIFAR else None
    if cfg.num_classes is not None and smallest is not None and cfg.num_classes < smallest:
        raise ConfigError(f"num_classes {cfg.num_classes} is smaller than the {cfg.dataset_choose} label "
                          f"range ({NUM_CLASSES[cfg.dataset_choose]}); set num_classes: null")
    last_seed = epoch_seed(cfg.seed, (cfg.epoch_size or 1) - 1)
    if last_seed >= SEED_LIMIT:
        raise ConfigError(f"seed {cfg.seed} is too large for epoch_size {cfg.epoch_size}: the data pipeline of the "
                          f"last epoch would use seed + {EPOCH_SEED_STRIDE} x {cfg.epoch_size - 1} = {last_seed}, "
                          f"and seeds are 32-bit (< 2**32 = {SEED_LIMIT}); expected a seed <= "
                          f"{SEED_LIMIT - 1 - EPOCH_SEED_STRIDE * (cfg.epoch_size - 1)}")
    if cfg.crop_pct is not None:
        check_resize(cfg.image_size, cfg.crop_pct)
    if cfg.run_modelarts and importlib.util.find_spec("moxing") is None:
        raise ConfigError("run_modelarts: true needs the ModelArts SDK (python package 'moxing'), which is not "
                          "installed; set run_modelarts: false outside ModelArts")
    if cfg.run_modelarts:
        for key, what in (("data_url", "the dataset's OBS path"), ("train_url", "the OBS path for the outputs")):
            if getattr(cfg, key) is None:
                raise ConfigError(f"run_modelarts: true needs {key} ({what}, e.g. --{key} obs://bucket/...); "
                                  "the ModelArts job passes it when the job's data/output paths are set")


def _chosen_recipe_keys(values, on_command_line):
    """The recipe keys (:data:`.presets.RECIPE_KEYS`) the user chose: given on the command line, or
    set in the config file (or by ``--demo``) to a value other than the recipe's. A file that
    restates the recipe's values, such as a run's saved ``config.yaml``, leaves them the recipe's."""
    supplied = recipe(values["dataset_choose"], values["arch"])
    return {name for name in RECIPE_KEYS
            if name in on_command_line or (values[name] is not None and values[name] != supplied.get(name))}


def _check_training(cfg, given):
    """The training schedule's keys together (:func:`src.train.optim.cosine_schedule`; an
    eval_interval longer than the run is named in one warning): a cool-down that leaves the cosine
    decay no epoch after the warm-up is dropped there, and a warm-up longer than the run is compressed
    into it. Refused when the key that would be dropped or compressed was given; when it is the
    recipe's, :func:`src.train.optim.log_schedule` names the change in one warning. `given`: the recipe
    keys not left to the recipe."""
    warm, cool, epochs = cfg.warmup_epochs, cfg.cooldown_epochs, cfg.epoch_size
    if None in (warm, cool, epochs):
        return
    if cfg.eval_interval > epochs:
        print(f"warning: eval_interval {cfg.eval_interval} is more than epoch_size {epochs}: the run is validated "
              "only after its last epoch", file=sys.stderr, flush=True)
    if cool > 0 and warm + cool >= epochs and "cooldown_epochs" in given:
        example = f"--cooldown_epochs {epochs - warm - 1}" if warm < epochs else \
            f"--warmup_epochs {epochs - 1} --cooldown_epochs 0"
        raise ConfigError(f"warmup_epochs {warm} + cooldown_epochs {cool} leave no epoch of epoch_size {epochs} for "
                          f"the cosine decay: the cool-down would be dropped; expected warmup_epochs + cooldown_epochs "
                          f"< epoch_size (e.g. {example})")
    if warm > epochs and "warmup_epochs" in given:
        raise ConfigError(f"warmup_epochs {warm} is longer than epoch_size {epochs}: the warm-up would be compressed "
                          f"into the run; expected warmup_epochs <= epoch_size")


#: Training keys that another key's value turns off: ``(key, is off, why)``.
_INERT = [
    ("loss_scale", lambda c: c.loss_scale_type == "none", "loss_scale_type is none"),
    ("model_ema_decay", lambda c: not c.model_ema, "model_ema is off"),
    ("warmup_lr", lambda c: c.warmup_epochs == 0, "warmup_epochs is 0"),
    ("mixup_prob", lambda c: c.mixup == 0 and c.cutmix == 0, "mixup and cutmix are 0"),
    ("mixup_switch_prob", lambda c: c.mixup == 0 or c.cutmix == 0,
     "it switches between mixup and cutmix, and one of them is 0"),
    ("crop_ratio", lambda c: list(c.crop_scale or []) == [1.0, 1.0], "crop_scale 1,1 turns the random crop off"),
    ("data_url", lambda c: not c.run_modelarts, "run_modelarts is false"),
    ("train_url", lambda c: not c.run_modelarts, "run_modelarts is false"),
    ("modelarts_data_path", lambda c: not c.run_modelarts, "run_modelarts is false"),
]


def _warn_inert(cfg, given):
    """One warning line for each key given on the command line that another setting turns off."""
    for key, off, why in _INERT:
        if key in given and off(cfg):
            print(f"warning: --{key} has no effect: {why}", file=sys.stderr, flush=True)


def cap_workers(cfg, cores=None):
    """Lower ``num_parallel_workers`` to the machine's core count (MindSpore's data pipeline refuses
    more), with one warning line on stderr; returns cfg."""
    cores = cores or os.cpu_count() or 1
    if cfg.num_parallel_workers > cores:
        print(f"warning: num_parallel_workers {cfg.num_parallel_workers} is more than the {cores} CPU core(s) "
              f"of this machine; using {cores}", file=sys.stderr, flush=True)
        cfg.num_parallel_workers = cores
    return cfg


def path_arg(text):
    """argparse ``type`` for a path option of a script outside the schema (pth2ckpt.py, dataset.py):
    the same check as the schema's path keys."""
    why = check_path(text)
    if why:
        import argparse
        raise argparse.ArgumentTypeError(f"invalid value {short_quote(text)}: expected {why}")
    return text


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------
def _fmt_default(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:g}" for x in v) + "]"
    return str(v)


def _help_text(keys=None):
    keys = keys or SCHEMA_BY_NAME
    own = [k for k in keys.values() if k.option]
    lines = [f"usage: {os.path.basename(sys.argv[0])} [--config FILE] [--key value ...]", "",
             "--config FILE  YAML file (default: config.yaml at the top of the repository)", ""]
    if own:
        lines.append("options of this script:")
        for k in own:
            lines.append(f"  --{k.name} ({expected_values(k)}; default {_fmt_default(k.default)})")
            lines.append(f"      {k.help}")
        lines.append("")
    lines.append("config keys:")
    for k in SCHEMA:
        lines.append(f"  --{k.name} ({expected_values(k)}; default {_fmt_default(k.default)})")
        lines.append(f"      {k.help}")
    return "\n".join(lines)


def config_markdown():
    """A Markdown table of all keys (name, default, accepted values, help) for the README."""
    rows = ["| key | default | values | read by | meaning |", "|---|---|---|---|---|"]
    for k in SCHEMA:
        read_by = "all" if k.scripts == SCRIPTS else ", ".join(k.scripts)
        rows.append(f"| `{k.name}` | `{_fmt_default(k.default)}` | {expected_values(k)} | {read_by} | {k.help} |")
    return "\n".join(rows)
