"""src/config: defaults < YAML < CLI, per-dataset values, and the errors for unknown keys and bad values."""
import importlib.util
import os

import pytest
import yaml

from helpers import REPO, run_main
from src import config
from src.config import SCHEMA, load_config
from src.data.randaugment import parse_aa
from src.platform import device
from src.platform.device import resolve_device
from src.platform.errors import ConfigError


def write_yaml(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------- defaults
def test_config_yaml_repeats_the_schema_defaults():
    """config.yaml is the editable copy of the schema defaults: same keys, same values."""
    with open(os.path.join(REPO, "config.yaml")) as f:
        on_disk = yaml.safe_load(f)
    assert on_disk == {k.name: k.default for k in SCHEMA}


def test_every_key_has_help_and_appears_in_the_docs_table():
    table = config.config_markdown()
    for key in SCHEMA:
        assert key.help.strip(), key.name
        assert f"`{key.name}`" in table


def test_required_keys_and_recipe_defaults():
    cfg = load_config([])
    expected = {"arch": "convmlp_s", "dataset_choose": "cifar10", "image_size": 224, "batch_size": 128,
                "epoch_size": 60, "lr": 3e-4, "min_lr": 1e-5, "warmup_lr": 1e-6, "warmup_epochs": 10,
                "weight_decay": 0.05, "smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0,
                "mixup_switch_prob": 0.5, "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "hflip": 0.5,
                "crop_scale": [0.8, 1.0], "interpolation": "bicubic", "drop_path_rate": 0.1,
                "pretrained_ckpt": None, "resume": None, "amp_level": "O0", "loss_scale_type": "none",
                "loss_scale": 1024.0, "device_target": "auto", "download": False, "run_modelarts": False,
                "is_distributed": False, "seed": 0, "mode": "graph", "max_steps_per_epoch": None}
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_dataset_defaults_follow_dataset_choose():
    c10 = load_config([])
    assert (c10.num_classes, c10.mean, c10.std) == (10, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    assert c10.train_data_path == c10.val_data_path == "data/cifar-10-batches-bin"
    c100 = load_config(["--dataset_choose", "cifar100"])
    assert (c100.num_classes, c100.mean, c100.std) == (100, [0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])
    assert c100.train_data_path == "data/cifar-100-binary"
    demo = load_config(["--demo"])
    assert demo.train_data_path == "data/demo/cifar-10-batches-bin"


def test_values_set_by_the_user_are_kept_over_dataset_defaults():
    cfg = load_config(["--dataset_choose", "cifar100", "--num_classes", "120", "--mean", "0.5,0.5,0.5",
                       "--train_data_path", "/x/train"])
    assert (cfg.num_classes, cfg.mean, cfg.train_data_path) == (120, [0.5, 0.5, 0.5], "/x/train")
    assert cfg.val_data_path == "data/cifar-100-binary"


# ---------------------------------------------------------------------------------- precedence
def test_precedence_default_then_yaml_then_cli(tmp_path):
    path = write_yaml(tmp_path, "batch_size: 32\nlr: 1e-4\naa: null\ncrop_scale: [0.5, 1]\n")
    cfg = load_config(["--config", path, "--batch_size", "16"])
    assert cfg.batch_size == 16            # CLI beats YAML
    assert cfg.lr == 1e-4                  # YAML beats default (PyYAML reads "1e-4" as a string)
    assert cfg.aa is None and cfg.crop_scale == [0.5, 1.0]
    assert cfg.epoch_size == 60            # default


@pytest.mark.parametrize("argv, key, value", [
    (["--download"], "download", True),                       # bare flag = true
    (["--download", "false"], "download", False),
    (["--is_distributed=True"], "is_distributed", True),
    (["--pretrained_ckpt", "null"], "pretrained_ckpt", None),
    (["--aa", "none"], "aa", None),
    (["--crop_scale", "0.5,1"], "crop_scale", [0.5, 1.0]),
    (["--crop_scale", "[0.6, 0.9]"], "crop_scale", [0.6, 0.9]),
    (["--device_target", "cpu"], "device_target", "CPU"),     # choices are case-insensitive
    (["--max_steps_per_epoch", "3"], "max_steps_per_epoch", 3),
    (["--resume", "auto"], "resume", "auto"),
    (["--batch-size", "8"], "batch_size", 8),                 # dashes accepted
    (["--lr", "1e-3", "--download"], "download", True),
])
def test_cli_value_syntax(argv, key, value):
    assert getattr(load_config(argv), key) == value


def test_save_writes_a_yaml_that_loads_back_to_the_same_config(tmp_path):
    cfg = load_config(["--dataset_choose", "cifar100", "--aa", "null", "--lr", "2e-4"])
    path = cfg.save(str(tmp_path / "out" / "config.yaml"))
    assert os.listdir(tmp_path / "out") == ["config.yaml"]   # no temporary file left
    assert load_config(["--config", path]).to_dict() == cfg.to_dict()


# ---------------------------------------------------------------------------------- errors
def test_unknown_key_in_yaml_names_file_key_and_suggestion(tmp_path):
    path = write_yaml(tmp_path, "batchsize: 32\n")
    with pytest.raises(ConfigError, match="unknown key 'batchsize'; did you mean 'batch_size'") as e:
        load_config(["--config", path])
    assert path in str(e.value)


def test_unknown_key_on_the_command_line():
    with pytest.raises(ConfigError, match="command line: unknown key 'epochs_size'; did you mean 'epoch_size'"):
        load_config(["--epochs_size", "3"])
    with pytest.raises(ConfigError, match="unknown key 'frobnicate'"):
        load_config(["--frobnicate"])


@pytest.mark.parametrize("argv, key, value, expected", [
    (["--batch_size", "-1"], "batch_size", "-1", ">= 1"),
    (["--batch_size", "abc"], "batch_size", "abc", "an integer"),
    (["--image_size", "3.5"], "image_size", "3.5", "an integer"),
    (["--epoch_size", "0"], "epoch_size", "0", ">= 1"),
    (["--lr", "fast"], "lr", "fast", "a number"),
    (["--lr", "-1e-3"], "lr", "-1e-3", ">= 0"),
    (["--hflip", "1.5"], "hflip", "1.5", "[0, 1]"),
    (["--dataset_choose", "svhn"], "dataset_choose", "svhn", "cifar10, cifar100, flowers102, imagenet, imagefolder"),
    (["--device_target", "TPU"], "device_target", "TPU", "auto, Ascend, GPU, CPU"),
    (["--arch", "convmlp_xl"], "arch", "convmlp_xl", "convmlp_s, convmlp_m, convmlp_l"),
    (["--amp_level", "O4"], "amp_level", "O4", "O0, O1, O2, O3"),
    (["--loss_scale_type", "auto"], "loss_scale_type", "auto", "none, fixed, dynamic"),
    (["--download", "maybe"], "download", "maybe", "true or false"),
    (["--crop_scale", "0.5"], "crop_scale", "0.5", "a list of 2 numbers"),
    (["--crop_scale", "0.9,0.5"], "crop_scale", "0.9,0.5", "lo <= hi"),
    (["--std", "0.2,0,0.2"], "std", "0.2,0,0.2", "positive"),
    (["--aa", "rand-m20"], "aa", "rand-m20", "0..10"),
    (["--aa", "rand-m9-inc0"], "aa", "rand-m9-inc0", "inc1"),
    (["--aa", "augmix-m5"], "aa", "augmix-m5", "'rand-...'"),
    (["--batch_size", "2.5"], "batch_size", "2.5", "an integer"),
    (["--seed", "true"], "seed", "true", "an integer"),
])
def test_invalid_values_name_key_value_and_expectation(argv, key, value, expected):
    with pytest.raises(ConfigError) as e:
        load_config(argv)
    msg = str(e.value)
    assert f"'{key}'" in msg and repr(value) in msg and expected in msg, msg
    assert "\n" not in msg


def test_invalid_value_in_yaml_names_the_file(tmp_path):
    path = write_yaml(tmp_path, "batch_size: 3.5\n")
    with pytest.raises(ConfigError, match=r"invalid value 3.5 for 'batch_size'") as e:
        load_config(["--config", path])
    assert path in str(e.value)


def test_num_classes_smaller_than_the_dataset_is_refused():
    with pytest.raises(ConfigError, match="num_classes 10 is smaller than the cifar100 label range"):
        load_config(["--dataset_choose", "cifar100", "--num_classes", "10"])


@pytest.mark.parametrize("text, expected", [("a: [1, 2\n", "invalid YAML at line"),
                                            ("- 1\n- 2\n", "expected a mapping")])
def test_broken_yaml_files(tmp_path, text, expected):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=expected):
        load_config(["--config", path])


def test_missing_config_file_and_missing_value():
    with pytest.raises(ConfigError, match="config file /no/such.yaml not found"):
        load_config(["--config", "/no/such.yaml"])
    with pytest.raises(ConfigError, match="--batch_size needs a value"):
        load_config(["--batch_size"])


@pytest.mark.skipif(importlib.util.find_spec("moxing") is not None, reason="ModelArts SDK installed")
def test_run_modelarts_without_the_sdk_is_a_clear_error():
    with pytest.raises(ConfigError, match="run_modelarts: true needs the ModelArts SDK.*moxing"):
        load_config(["--run_modelarts", "true"])


def test_attribute_access_suggests_close_keys():
    cfg = load_config([])
    with pytest.raises(AttributeError, match="did you mean 'batch_size'"):
        cfg.batchsize  # noqa: B018
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        cfg.batchsize = 3


def test_cli_error_is_one_line_and_exit_status_2():
    """``python -m src.config --batch_size x``, through the run_cli of every entry script."""
    proc = run_main("src.config.__main__", "--batch_size", "x")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: command line: invalid value 'x' for 'batch_size': "
                                                "expected an integer >= 1 or null"]


# ---------------------------------------------------------------------------------- aa, device
def test_parse_aa():
    assert parse_aa("rand-m9-mstd0.5-inc1") == {"m": 9, "n": 2, "mstd": 0.5, "inc": 1}
    assert parse_aa("rand-m7-n3-inc1") == {"m": 7, "n": 3, "mstd": 0.0, "inc": 1}
    assert parse_aa(None) is None


def test_resolve_device_auto_picks_the_first_available(monkeypatch):
    monkeypatch.setattr(device, "_device_available", lambda t: t in ("GPU", "CPU"))
    assert resolve_device(load_config(["--device_target", "auto"])) == "GPU"
    monkeypatch.setattr(device, "_device_available", lambda t: t == "CPU")
    assert resolve_device(load_config([])) == "CPU"
    with pytest.raises(ConfigError, match="device_target Ascend is not available"):
        resolve_device(load_config(["--device_target", "Ascend"]))


def test_resolve_device_on_this_machine_returns_an_available_device():
    target = resolve_device(load_config([]))
    assert target in ("Ascend", "GPU", "CPU")
    assert device._device_available(target)
