"""Small inputs never cause unbounded work: YAML aliases are capped while a document is composed
(``src/config/strict_yaml.py``), a message quotes only a short prefix of a value
(``model.errors.short_quote``), and every count that allocates is checked against the machine
before anything is allocated (``src/platform/bounds.py``)."""
import os
import tracemalloc

import pytest

from helpers import TINY_CKPT_FLAGS, assert_user_error, run_main, run_script
from src.checkpoint.checkpoint import CheckpointMeta
from src.config import convert_value, load_config
from src.config.strict_yaml import MAX_ALIAS_NODES, load_mapping
from src.platform import bounds
from src.platform.errors import CheckpointError, ConfigError, run_cli, short_quote

#: A few hundred bytes that PyYAML would expand to 9**9 (387 million) strings.
BOMB = ("lr: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" +
        "".join(f"x{i}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)))
MEGABYTE = "9" * 1_000_000


def one_line(text, limit=400):
    return "\n" not in text and len(text) < limit


def peak_memory(fn):
    """``(fn's result or the exception it raised, the most memory Python allocated during the call)``."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------------------
# YAML aliases

def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Expanded, the document would hold 387 million strings (gigabytes): refused while at most a few
    megabytes were ever allocated."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    err, peak = peak_memory(lambda: load_config(["--config", str(path)]))
    assert isinstance(err, ConfigError) and peak < 4 * 2 ** 20, (err, peak)
    assert str(err).startswith(f"config file {path}: YAML aliases (*name) expand to more than "
                               f"{MAX_ALIAS_NODES} values") and one_line(str(err))


def test_an_alias_bomb_in_a_checkpoints_saved_config(tmp_path):
    with pytest.raises(CheckpointError, match="its saved config .*YAML aliases"):
        CheckpointMeta(config=BOMB).saved_config("run/last.ckpt")


def test_an_alias_bomb_in_a_command_line_list():
    with pytest.raises(ConfigError) as err:
        convert_value("mean", "[&a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(["[*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]"] * 9)
                      + "]", "command line")
    assert one_line(str(err.value)) and "'mean'" in str(err.value)


def test_a_few_aliases_and_merges_still_work():
    text = "base: &base {lr: 0.001, epoch_size: 3}\nrun:\n  <<: *base\n  epoch_size: 5\nsizes: [*base, *base]\n"
    data = load_mapping(text, "config file c.yaml")
    assert data["run"] == {"lr": 0.001, "epoch_size": 5} and data["sizes"] == [data["base"]] * 2


# ------------------------------------------------------------------------------------------------
# Short quotes of values

def test_short_quote_is_bounded_whatever_the_value():
    assert short_quote("abc") == "'abc'"
    assert short_quote(MEGABYTE) == f"'{'9' * 60}'... (1000000 characters)"
    nested = [[list(range(1000))] * 1000] * 1000      # its repr would be 4.9 GB
    quoted, peak = peak_memory(lambda: short_quote(nested))
    assert len(quoted) < 80 and peak < 2 ** 20, (quoted, peak)


@pytest.mark.parametrize("how", ["value", "yaml value", "unknown key", "duplicate key", "flag", "path"])
def test_every_message_quotes_only_a_prefix_of_a_huge_value(how, tmp_path):
    path = tmp_path / "c.yaml"
    if how == "value":
        argv = ["--lr", MEGABYTE + "x"]
    elif how == "path":
        argv = ["--checkpoint_path", MEGABYTE]
    elif how == "flag":
        argv = ["--epoch_size", "1", "--epoch_size", MEGABYTE]
    else:
        path.write_text({"yaml value": f"lr: [{MEGABYTE}]\n", "unknown key": f"? {MEGABYTE}x\n: 1\n",
                         "duplicate key": f"lr: '{MEGABYTE}'\nlr: 1\n"}[how])
        argv = ["--config", str(path)]
    with pytest.raises(ConfigError) as err:
        load_config(argv)
    assert one_line(str(err.value), 600), len(str(err.value))
    assert "9" * 61 not in str(err.value)


def test_run_cli_prints_one_short_line_for_a_huge_value(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda argv: load_config(argv), ["--batch_size", MEGABYTE + "-"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: command line: invalid value '999")
    assert len(err) < 300


# ------------------------------------------------------------------------------------------------
# Counts that allocate, checked before anything is allocated

def test_a_batch_that_cannot_fit_is_one_line_naming_the_key(monkeypatch):
    monkeypatch.setattr(bounds, "available_memory", lambda: 8 * 2 ** 30)
    bounds.check_batch("batch_size", 1000, 224)                     # 0.6 GB: fine
    with pytest.raises(ConfigError) as err:
        bounds.check_batch("eval_batch_size", 10 ** 9, 224, "config")
    assert str(err.value) == ("config: eval_batch_size 1000000000 (one batch of 3x224x224 float32 images) needs at "
                              "least 547.6 TiB of memory, more than the 8.0 GiB available; give a smaller "
                              "eval_batch_size")


def test_generate_checks_the_disk_before_writing(tmp_path, monkeypatch, capsys):
    import collections
    import dataset
    monkeypatch.setattr(bounds.shutil, "disk_usage", lambda p: collections.namedtuple("U", "total used free")(
        10 ** 9, 0, 10 ** 8))
    with pytest.raises(SystemExit) as exit_:
        run_cli(dataset.main, ["generate", "--out", str(tmp_path / "out"), "--train", "1000000", "--val", "0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: --train 1000000 --val 0 needs 2.9 GiB of disk space in")
    assert err.count("\n") == 1 and not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("script,flags,fragment", [
    ("export.py", ["--batch_size", "1000000000", "--file_name", "{tmp}/m"],
     "command line: --batch_size 1000000000 (one batch of 3x32x32 float32 images) needs at least 11.2 TiB"),
    ("evl.py", ["--eval_batch_size", "1000000000", "--train_data_path", "{data}", "--val_data_path", "{data}"],
     "config: eval_batch_size 1000000000 (one batch of 3x32x32 float32 images) needs at least 11.2 TiB"),
    ("benchmarks/bench.py", ["--batch", "1000000000", "--cases", "infer224"],
     "command line: --batch 1000000000 (one batch of 3x224x224 float32 images) needs at least 547.6 TiB"),
], ids=["export", "evl", "bench"])
def test_scripts_refuse_a_batch_that_cannot_fit(script, flags, fragment, tiny_ckpt, tiny_cifar10, tmp_path):
    flags = [f.format(tmp=tmp_path, data=tiny_cifar10) for f in flags]
    args = flags if script.startswith("bench") else ["--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, *flags]
    # export.py and evl.py: main through run_cli in this process; bench.py (benchmarks/ is no package)
    # as a process
    proc = (run_script if script.startswith("benchmarks/") else run_main)(script, *args, timeout=600)
    assert_user_error(proc, fragment)
    assert os.listdir(tmp_path) == []
