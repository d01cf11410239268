"""Values the scripts must not trust: NaN weights, numbers out of range, config files that are not
UTF-8 or repeat a key, flags given twice, a training folder that holds only the test file, and a
Ctrl-C or SIGTERM at any moment.

As in tests/test_reliability.py every case runs the real entry script's ``main`` through
``run_cli`` in this process (an interrupt: as a subprocess) and checks the exit status (2 for an
expected error, 130 for an interrupt), exactly one ``error: ...`` line naming the culprit, no
traceback, and that every file that was on disk before is byte-identical after, with nothing new
written. The checkpoints come from the session's trained run of the small ``TINY_TOPOLOGY`` model
(conftest ``trained_run``); the damaged ones are copies with NaN, infinity or float32-limit weights.
"""
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from helpers import (REPO, TINY_TOPOLOGY, TRAIN_EPOCHS, TRAIN_FLAGS, Snapshot, data_flags, expect_clean_failure,
                     ok, override, run_main)

#: The run's flags; a train.py case continues the run for one more epoch.
COMMON = TRAIN_FLAGS
MORE_EPOCHS = TRAIN_EPOCHS + 1


# ------------------------------------------------------------------------------------------------
# A finished run and damaged copies of its checkpoint

@pytest.fixture
def good_run(trained_run):
    """The session's trained run: its folder, with last.ckpt and config.yaml (do not modify it)."""
    return trained_run["dir"]


def rewrite_checkpoint(src, dst, weights=None, meta=None):
    """Copy checkpoint `src` to `dst`, with `weights(name, array) -> array` applied to each tensor
    and the string metadata replaced by `meta` entries."""
    import mindspore as ms
    params = ms.load_checkpoint(str(src))
    tensors, strings = [], {}
    for name, value in params.items():
        if isinstance(value, str):
            strings[name] = value
            continue
        arr = value.asnumpy()
        if weights is not None:
            arr = weights(name, arr.copy())
        tensors.append({"name": name, "data": ms.Tensor(arr)})
    strings.update(meta or {})
    ms.save_checkpoint(tensors, str(dst), append_dict=strings)
    return dst


def _nan_head(name, arr):
    return np.full_like(arr, np.nan) if name == "head.weight" else arr


def _one_nan_in_first_conv(name, arr):
    if name == "tokenizer.block.0.weight":
        arr.flat[7] = np.nan
    return arr


def _inf_bias(name, arr):
    if name == "head.bias":
        arr[0] = np.inf
    return arr


def _float32_limit_head(name, arr):
    """Finite weights whose logits overflow float32: the outputs become inf and NaN."""
    return np.full_like(arr, 3e38) * np.sign(np.arange(arr.size).reshape(arr.shape) % 2 - 0.5) \
        if name == "head.weight" else arr


@pytest.fixture(scope="module")
def damaged(trained_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    src = trained_run["dir"] / "last.ckpt"
    return {
        "nan_head": rewrite_checkpoint(src, folder / "nan_head.ckpt", _nan_head),
        "nan_conv": rewrite_checkpoint(src, folder / "nan_conv.ckpt", _one_nan_in_first_conv),
        "inf_bias": rewrite_checkpoint(src, folder / "inf_bias.ckpt", _inf_bias),
        "overflow": rewrite_checkpoint(src, folder / "overflow.ckpt", _float32_limit_head),
        "config_list": rewrite_checkpoint(src, folder / "config_list.ckpt", meta={"config": "- a\n- b\n"}),
        "config_broken": rewrite_checkpoint(src, folder / "config_broken.ckpt", meta={"config": "arch: [convmlp_s\n"}),
        "config_huge": rewrite_checkpoint(src, folder / "config_huge.ckpt",
                                          meta={"config": "arch: convmlp_s\nimage_size: 100000\n"}),
        "config_twice": rewrite_checkpoint(src, folder / "config_twice.ckpt",
                                           meta={"config": "image_size: 32\nimage_size: 64\n"}),
    }


@pytest.fixture
def run_copy(good_run, tmp_path):
    """A copy of the finished run that a failing train.py --resume must leave as it is."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.ckpt", "config.yaml"):
        shutil.copyfile(good_run / name, out / name)
    return out


# ------------------------------------------------------------------------------------------------
# Non-finite weights are refused wherever a checkpoint is read

NAN_CASES = [  # (entry, checkpoint, fragments)
    ("evl", "nan_head", ["non-finite weights", "head.weight (", "NaN of"]),
    ("evl", "nan_conv", ["non-finite weights", "tokenizer.block.0.weight (1 NaN of 216)"]),
    ("evl", "inf_bias", ["non-finite weights", "head.bias (1 inf of 10)"]),
    ("infer", "nan_head", ["non-finite weights", "head.weight"]),
    ("export", "nan_conv", ["non-finite weights", "tokenizer.block.0.weight"]),
    ("pretrained", "nan_head", ["non-finite weights", "head.weight"]),
    ("resume", "nan_conv", ["non-finite weights", "tokenizer.block.0.weight"]),
]


def run_with_checkpoint(entry, ckpt, tmp_path, data, run_dir, *extra):
    """Give `ckpt` to an entry script as a user would (in this process: evl.py's graphs are
    compiled without the per-process graph cache)."""
    if entry == "evl":
        return run_main("evl.py", "--checkpoint_path", ckpt, *data_flags(data), "--json", tmp_path / "eval.json",
                        "--graph_cache", "false", *extra)
    if entry == "infer":
        return run_main("infer.py", "--checkpoint_path", ckpt, tmp_path / "img.png", "--json",
                        tmp_path / "pred.json", *extra)
    if entry == "export":
        return run_main("export.py", "--checkpoint_path", ckpt, "--file_name", tmp_path / "exported", *extra)
    if entry == "pretrained":
        return run_main("train.py", *COMMON, *data_flags(data), "--pretrained_ckpt", ckpt,
                        "--save_checkpoint_path", tmp_path / "fresh_run", *extra)
    assert entry == "resume"
    return run_main("train.py", *override([*COMMON, *data_flags(data), "--epoch_size", MORE_EPOCHS,
                                           "--save_checkpoint_path", run_dir], "--resume", ckpt, *extra))


def _png(path):
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)


@pytest.mark.parametrize("entry, name, fragments", NAN_CASES, ids=[f"{e}-{n}" for e, n, _ in NAN_CASES])
def test_non_finite_weights_are_refused(entry, name, fragments, damaged, run_copy, tiny_cifar10, tmp_path):
    ckpt = damaged[name]
    _png(tmp_path / "img.png")
    # (a fresh train.py run makes its folder for train.log before it reads the checkpoint)
    before = Snapshot(*([ckpt] if entry == "pretrained" else [tmp_path]), run_copy, tiny_cifar10)
    proc = run_with_checkpoint(entry, ckpt, tmp_path, tiny_cifar10, run_copy)
    expect_clean_failure(proc, before, str(ckpt), *fragments)
    if entry == "pretrained":
        assert not [f for f in os.listdir(tmp_path / "fresh_run") if f != "train.log"]


def test_weights_that_overflow_make_evaluation_an_error_not_nan(damaged, tiny_cifar10, tmp_path):
    """Finite weights at the float32 limit: evl.py names the checkpoint instead of printing 'mean loss: nan'."""
    before = Snapshot(tmp_path, tiny_cifar10)
    proc = run_with_checkpoint("evl", damaged["overflow"], tmp_path, tiny_cifar10, None)
    expect_clean_failure(proc, before, str(damaged["overflow"]), "non-finite outputs", "mean loss")
    assert "nan" not in proc.stdout.lower(), proc.stdout


def test_weights_that_overflow_make_inference_an_error(damaged, tmp_path):
    _png(tmp_path / "img.png")
    before = Snapshot(tmp_path)
    proc = run_with_checkpoint("infer", damaged["overflow"], tmp_path, None, None)
    expect_clean_failure(proc, before, str(damaged["overflow"]), "non-finite outputs", "img.png")


def test_export_verify_with_a_nan_difference_writes_nothing(damaged, good_run, tmp_path):
    """The exported graph and the model both give inf/NaN: a NaN difference is a failed check,
    and the existing file at the output path keeps its bytes."""
    (tmp_path / "exported.mindir").write_bytes(b"the previous export")
    before = Snapshot(tmp_path)
    proc = run_with_checkpoint("export", damaged["overflow"], tmp_path, None, None, "--verify")
    expect_clean_failure(proc, before, str(tmp_path / "exported.mindir"), "would not reproduce", "nan",
                         "nothing was written")
    assert sorted(os.listdir(tmp_path)) == ["exported.mindir"]


# ------------------------------------------------------------------------------------------------
# pth2ckpt.py: non-finite sources, a NaN verify difference, bounds of its flags

@pytest.fixture(scope="module")
def bad_pth(tiny, tmp_path_factory):
    import torch
    folder = tmp_path_factory.mktemp("bad_pth")
    state = torch.load(tiny["pth"], weights_only=True)
    nan = dict(state)
    nan["tokenizer.block.0.weight"] = state["tokenizer.block.0.weight"].clone()
    nan["tokenizer.block.0.weight"].view(-1)[3] = float("nan")
    torch.save(nan, folder / "nan.pth")
    big = dict(state)
    w = state["head.weight"]
    big["head.weight"] = torch.full_like(w, 3e38) * torch.sign(torch.arange(w.numel()).reshape(w.shape) % 2 - 0.5)
    torch.save(big, folder / "overflow.pth")
    return folder


def test_pth_with_nan_weights_is_refused(bad_pth, tiny, good_run, tmp_path):
    dst = tmp_path / "converted.ckpt"
    shutil.copyfile(good_run / "last.ckpt", dst)
    before = Snapshot(tmp_path, bad_pth)
    proc = run_main("pth2ckpt.py", "--src", bad_pth / "nan.pth", "--dst", dst, *tiny["flags"])
    expect_clean_failure(proc, before, str(bad_pth / "nan.pth"), "non-finite weights",
                         "tokenizer.block.0.weight (1 NaN", "nothing was written")


def test_pth2ckpt_verify_with_a_nan_difference_fails_and_writes_nothing(bad_pth, tiny, good_run, tmp_path):
    dst = tmp_path / "converted.ckpt"
    shutil.copyfile(good_run / "last.ckpt", dst)
    before = Snapshot(tmp_path, bad_pth)
    proc = run_main("pth2ckpt.py", "--src", bad_pth / "overflow.pth", "--dst", dst, *tiny["flags"], "--verify")
    expect_clean_failure(proc, before, "verify failed", "max abs diff nan", "nothing was written")
    assert "max abs diff nan" in proc.stdout and ": FAIL" in proc.stdout


PTH_FLAG_CASES = [  # (flags, fragments)
    (["--arch", "convmlp_s", "--channels", "0"], ["'--channels'", "'0'", ">= 2"]),
    (["--arch", "convmlp_s", "--dims", "16", "-32", "64"], ["'--dims'", "16,-32,64", "[1, 8192]"]),
    (["--arch", "convmlp_s", "--num_classes", "-3"], ["'--num_classes'", ">= 1"]),
    (["--arch", "convmlp_s", "--verify_size", "100000"], ["'--verify_size'", "[8, 1024]"]),
    (["--arch", "convmlp_s", "--dims", "16", "32", "--dims", "8", "16"], ["--dims is given twice", "'16 32'",
                                                                           "'8 16'"]),
    (["--arch", "convmlp_s", "--dst", ""], ["--dst", "non-empty path"]),
]


@pytest.mark.parametrize("flags, fragments", PTH_FLAG_CASES, ids=[" ".join(f[2:4]) for f, _ in PTH_FLAG_CASES])
def test_pth2ckpt_flags_have_the_schema_bounds(flags, fragments, tiny, tmp_path):
    dst = tmp_path / "out.ckpt"
    dst.write_bytes(b"previous")
    before = Snapshot(tmp_path)
    proc = run_main("pth2ckpt.py", "--src", tiny["pth"], *override(["--dst", dst], *flags))
    expect_clean_failure(proc, before, *fragments)


# ------------------------------------------------------------------------------------------------
# Bounds and cross-key checks of the schema (no model is built: these fail in a second or two)

CONFIG_CASES = [  # (flags, fragments)
    (["--image_size", "100000"], ["'image_size'", "'100000'", "[8, 1024]"]),
    (["--seed", str(2 ** 32)], ["'seed'", "[0, 4294967295]"]),
    (["--seed", str(2 ** 32 - 1500), "--epoch_size", "3"], ["seed 4294965796", "epoch_size 3",
                                                            "4294967796", "< 2**32", "<= 4294965295"]),
    (["--save_checkpoint_path", ""], ["'save_checkpoint_path'", "non-empty path"]),
    (["--train_data_path", " "], ["'train_data_path'", "non-empty path"]),
    (["--mean", "nan,0.5,0.5"], ["'mean'", "finite numbers"]),
    (["--blocks", "1,0,1"], ["'blocks'", "[1, 64]"]),
    (["--lr", "1e-3", "--lr", "3e-4"], ["--lr is given twice", "'1e-3'", "'3e-4'"]),
]


@pytest.mark.parametrize("flags, fragments", CONFIG_CASES, ids=[f[0][2:] + str(i) for i, (f, _) in
                                                                 enumerate(CONFIG_CASES)])
def test_out_of_range_values_are_one_line(flags, fragments, run_copy, tiny_cifar10):
    before = Snapshot(run_copy, tiny_cifar10)
    proc = run_main("train.py", *override([*COMMON, *data_flags(tiny_cifar10), "--epoch_size", MORE_EPOCHS,
                                           "--resume", "auto", "--save_checkpoint_path", run_copy], *flags))
    expect_clean_failure(proc, before, *fragments)


def test_a_seed_that_would_overflow_in_a_later_epoch_is_refused_before_resuming(run_copy, tiny_cifar10):
    """The run finished its epochs with a valid seed; continuing to 10**6 epochs would overflow the
    per-epoch seed long after a checkpoint was written: refused at the start instead."""
    before = Snapshot(run_copy, tiny_cifar10)
    proc = run_main("train.py", *override([*COMMON, *data_flags(tiny_cifar10), "--resume", "auto",
                                           "--save_checkpoint_path", run_copy], "--epoch_size", "100000",
                                          "--seed", str(2 ** 32 - 10 ** 6)))
    expect_clean_failure(proc, before, "seed 4293967296", "epoch_size 100000", "32-bit")


def test_dims_alone_keeps_the_arch_rest_and_a_length_mismatch_is_one_line(good_run, run_copy, tiny_cifar10):
    """--dims without blocks/mlp_ratios is completed from the arch; two dims for three stages is an
    error naming every list and where it came from, in every script that builds a model."""
    from src.config import load_config
    from src.checkpoint.load import build_model
    net = build_model(load_config(["--dims", "16,32,64", "--num_classes", "10"]))
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert shapes["head.weight"] == (10, 64) and "stages.1.blocks.3.channel_mlp1.fc1.weight" in shapes  # S: 2,4,2
    assert shapes["stages.0.blocks.0.channel_mlp1.fc1.weight"] == (32, 16)                            # ratio 2

    not_topology = COMMON[len(TINY_TOPOLOGY):]
    for script, args, where in (
            ("train.py", [*not_topology, *data_flags(tiny_cifar10), "--resume", "auto", "--save_checkpoint_path",
                          run_copy, "--dims", "16,32"], "mlp_ratios [2, 2, 2] (from convmlp_s)"),
            # evl.py: blocks and mlp_ratios come from the checkpoint's saved config (1,1,1 and 2,2,2)
            ("evl.py", ["--checkpoint_path", good_run / "last.ckpt", *data_flags(tiny_cifar10), "--dims", "16,32"],
             "blocks [1, 1, 1] (given)")):
        before = Snapshot(run_copy, good_run, tiny_cifar10)
        expect_clean_failure(run_main(script, *args), before, where, "dims [16, 32] (given)", "need one entry per stage")


# ------------------------------------------------------------------------------------------------
# Config files: encoding, keys given twice; a checkpoint's saved config

def _config_files(tmp_path):
    text = "batch_size: 8\nlr: 1.0e-3\n"
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(text.encode("utf-16"))                          # with its byte-order mark
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 1.0e-3\nbatch_size: 8\nlr: 3.0e-4\n")
    return [(utf16, ["is not UTF-8", "UTF-16 byte-order mark", "save it as UTF-8"]),
            (binary, ["is not UTF-8", "binary file", "expected a UTF-8 YAML file"]),
            (twice, ["key 'lr' is given twice", "line 1: 1.0e-3", "line 3: 3.0e-4"])]


@pytest.mark.parametrize("script", ["train", "evl"])
def test_config_files_that_are_not_utf8_or_repeat_a_key(script, run_copy, tiny_cifar10, tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    for path, fragments in _config_files(folder):
        before = Snapshot(run_copy, tiny_cifar10, folder)
        args = [*data_flags(tiny_cifar10), "--config", path]
        if script == "train":
            args = [*TINY_TOPOLOGY, *args, "--resume", "auto", "--save_checkpoint_path", run_copy]
        else:
            args = ["--checkpoint_path", run_copy / "last.ckpt", *args]
        expect_clean_failure(run_main(f"{script}.py", *args), before, f"config file {path}", *fragments)


SAVED_CONFIG_CASES = [  # (checkpoint, fragments)
    ("config_list", ["its saved config", "expected a mapping of key: value, got list"]),
    ("config_broken", ["its saved config", "invalid YAML"]),
    ("config_huge", ["its saved config", "'image_size'", "100000", "[8, 1024]"]),
    ("config_twice", ["its saved config", "key 'image_size' is given twice"]),
]


@pytest.mark.parametrize("name, fragments", SAVED_CONFIG_CASES, ids=[n for n, _ in SAVED_CONFIG_CASES])
def test_a_checkpoint_saved_config_is_checked_like_a_config_file(name, fragments, damaged, tiny_cifar10, tmp_path):
    before = Snapshot(tmp_path, damaged[name], tiny_cifar10)
    proc = run_with_checkpoint("evl", damaged[name], tmp_path, tiny_cifar10, None)
    expect_clean_failure(proc, before, str(damaged[name]), *fragments)


@pytest.mark.parametrize("name", ["config_list", "config_broken", "config_twice"])
def test_reverse_conversion_reads_the_topology_off_the_weights_when_the_saved_config_is_unusable(
        name, damaged, tmp_path):
    """pth2ckpt.py --reverse only needs the topology, which the weights determine: a saved config
    that evl.py refuses (same reader, src.checkpoint.checkpoint.CheckpointMeta.saved_config) is passed over, and the output
    says where the topology came from."""
    out = tmp_path / "back.pth"
    proc = ok(run_main("pth2ckpt.py", "--reverse", "--src", damaged[name], "--dst", out, "--verify"))
    assert "(from the weights' shapes)" in proc.stdout and os.path.isfile(out)


def test_flags_given_twice_in_the_other_scripts(good_run, tiny, tmp_path):
    before = Snapshot(tmp_path, good_run)
    ckpt = good_run / "last.ckpt"
    for script, args, fragments in (
            ("infer.py", ["--checkpoint_path", ckpt, "x.png", "--top_k", "3", "--top_k", "5"],
             ["--top_k is given twice", "'3'", "'5'"]),
            ("export.py", ["--checkpoint_path", ckpt, "--file_name", "a", "--file_name", "b"],
             ["--file_name is given twice", "'a'", "'b'"]),
            ("dataset.py", ["generate", "--train", "10", "--train", "20", "--out", tmp_path / "gen"],
             ["--train is given twice", "'10'", "'20'"]),
            ("evl.py", ["--checkpoint_path", ckpt, "--checkpoint_path", ckpt],
             ["--checkpoint_path is given twice"])):
        expect_clean_failure(run_main(script, *args), before, *fragments)


def test_too_many_workers_is_lowered_to_the_core_count_with_one_warning(good_run, tiny_cifar10, tmp_path):
    """MindSpore's data pipeline refuses more workers than cores (a traceback); the config lowers
    the value and says so once."""
    cores = os.cpu_count()
    proc = ok(run_main("evl.py", "--checkpoint_path", good_run / "last.ckpt", *data_flags(tiny_cifar10),
                       "--num_parallel_workers", cores + 1, "--graph_cache", "false"))
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: num_parallel_workers")]
    assert warnings == [f"warning: num_parallel_workers {cores + 1} is more than the {cores} CPU core(s) of this "
                        f"machine; using {cores}"]
    assert "accuracy:{'acc': " in proc.stdout


# ------------------------------------------------------------------------------------------------
# A training folder holding only the test file

def test_a_train_folder_holding_only_the_test_file_is_refused(tiny_cifar10, run_copy, tmp_path):
    """Train and val are different folders, so other file names are allowed, but the train folder
    holds only test_batch.bin: training on it would train on the test set."""
    train = tmp_path / "train_only_test"
    train.mkdir()
    shutil.copyfile(os.path.join(tiny_cifar10, "test_batch.bin"), train / "test_batch.bin")
    before = Snapshot(train, run_copy, tiny_cifar10)
    proc = run_main("train.py", *override([*COMMON, "--epoch_size", MORE_EPOCHS, "--resume", "auto",
                                           "--save_checkpoint_path", run_copy],
                                          "--train_data_path", train, "--val_data_path", tiny_cifar10))
    expect_clean_failure(proc, before, str(train / "test_batch.bin"), "holds only val-split files",
                         "would train on the test set", "data_batch_<n>.bin")


def test_a_val_folder_holding_only_training_files_is_refused(tiny_cifar10, good_run, tmp_path):
    val = tmp_path / "val_only_train"
    val.mkdir()
    shutil.copyfile(os.path.join(tiny_cifar10, "data_batch_1.bin"), val / "data_batch_1.bin")
    before = Snapshot(val, good_run, tiny_cifar10)
    proc = run_main("evl.py", "--checkpoint_path", good_run / "last.ckpt", "--train_data_path", tiny_cifar10,
                    "--val_data_path", val)
    expect_clean_failure(proc, before, str(val / "data_batch_1.bin"), "holds only train-split files",
                         "would evaluate on training data")


# ------------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM: one line, exit 130, nothing changed

def interrupt_when(args, marker, signum, timeout=240):
    """Start ``python ARGS``, send `signum` once a stdout line contains `marker`; returns
    ``(rc, stdout, stderr)``."""
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines, sent = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if marker in line and not sent:
                proc.send_signal(signum)
                sent = True
        err = proc.stderr.read()
        rc = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
    assert sent, "".join(lines)[-2000:] + err[-2000:]
    return rc, "".join(lines), err


INTERRUPT_CASES = [  # (script arguments, stdout marker, signal, expected words); each output file exists
    (["evl.py", "--checkpoint_path", "{ckpt}", "--json", "{out}/eval.json"], "evaluating", signal.SIGINT,
     "Ctrl-C"),
    (["export.py", "--checkpoint_path", "{ckpt}", "--file_name", "{out}/model.mindir"],
     "from the checkpoint's config", signal.SIGTERM, "SIGTERM"),
    (["pth2ckpt.py", "--src", "{pth}", "--dst", "{out}/converted.ckpt", "{flags}", "--verify", "--verify_size",
      "1024"], "mapped", signal.SIGTERM, "SIGTERM"),
]


@pytest.mark.parametrize("args, marker, signum, words", INTERRUPT_CASES,
                         ids=[f"{a[0]}-{s.name}" for a, _, s, _ in INTERRUPT_CASES])
def test_interrupt_is_one_line_exit_130_and_changes_nothing(args, marker, signum, words, good_run, tiny,
                                                           tiny_cifar10, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("eval.json", "model.mindir", "converted.ckpt"):   # the output path of each script
        (out / name).write_text(f"the previous {name}\n")
    before = Snapshot(out, good_run, tiny_cifar10)
    values = {"ckpt": good_run / "last.ckpt", "out": out, "pth": tiny["pth"]}
    args = [os.path.join(REPO, args[0])] + [b for a in args[1:] for b in
                                            (tiny["flags"] if a == "{flags}" else [a.format(**values)])]
    if args[0].endswith("evl.py"):
        args += data_flags(tiny_cifar10)
    rc, stdout, stderr = interrupt_when(args, marker, signum)
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert rc == 130, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stderr + stdout, stderr
    assert len(errors) == 1 and "interrupted" in errors[0] and words in errors[0], stderr
    assert Snapshot(out, good_run, tiny_cifar10) == before
