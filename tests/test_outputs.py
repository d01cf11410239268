"""Outputs: a path that is not a regular file is written in place, never replaced (a FIFO that no
process reads is one error after a bounded wait); a pipe whose reader has gone ends a script quietly
with exit status 141; a killed writer's private scratch folder is removed by the next write, a live
one's never; any name the OS accepts works for every writer; a generated data folder holds exactly
what was reported; only the run's outputs are uploaded. The system temp folder is compared before
and after a test, never assumed empty.

The rules live in ``src/platform/fileio.py`` (:func:`atomic_output`, the one writer) and are tested
there in-process first. The device cases use a character device made with ``mknod`` in the test's
own folder and a FIFO made with ``os.mkfifo``; the entry scripts that write to ``/dev/stdout``,
``/dev/full`` and ``/dev/null`` run in a private mount namespace (``unshare -m``) whose ``/dev``
is a tmpfs with nodes of the test's own, so the machine's ``/dev`` is never at risk.
"""
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

from helpers import (REPO, TINY_CKPT_FLAGS, assert_user_error, data_flags, ok, run_main, run_script,
                     run_script_reader_leaves)
from src.checkpoint.checkpoint import save_atomic
from src.platform import fileio
from src.platform.errors import EXIT_BROKEN_PIPE
from src.platform.fileio import SCRATCH_PREFIX, OutputError, atomic_output
from model import read_checkpoint

LONG = "x" * 300   # more than NAME_MAX (255 bytes) of every common file system


@pytest.fixture
def left_behind():
    """A function listing what the test left in the system temp folder: the private folders that
    atomic_output makes for streams and unusual folders (named with this process's id) that were
    not there when the test started. Whatever else the folder holds, and what other processes put
    there meanwhile, is not the test's doing."""
    temp = tempfile.gettempdir()
    before, ours = set(os.listdir(temp)), f"{SCRATCH_PREFIX}{os.getpid()}-"
    return lambda: sorted(n for n in set(os.listdir(temp)) - before if n.startswith(ours))


def write(path, text="content\n", **kw):
    with atomic_output(path, **kw) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def device(folder, name, minor):
    """A character device of the test's own (1,3 behaves as /dev/null, 1,7 as /dev/full)."""
    path = os.path.join(folder, name)
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a character device here ({exc})")
    return path


def node(path):
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return str(folder)


# ------------------------------------------------------------------------------------------------
# Streams: written in place, never replaced (in-process)

def test_a_character_device_is_written_in_place(tmp_path, left_behind):
    null = device(tmp_path, "null", 3)
    before = node(null)
    write(null, "x" * 100_000)
    assert node(null) == before and sorted(os.listdir(tmp_path)) == ["null"] and not left_behind()


def test_a_device_that_refuses_the_data_is_one_error_and_stays(tmp_path, left_behind):
    full = device(tmp_path, "full", 7)
    before = node(full)
    with pytest.raises(OutputError) as err:
        write(full)
    assert str(err.value) == f"cannot write '{full}': No space left on device"
    assert node(full) == before and sorted(os.listdir(tmp_path)) == ["full"] and not left_behind()


def test_a_fifo_receives_the_verified_content_in_place(tmp_path, left_behind):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    before, got = node(fifo), []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    seen = []
    write(fifo, "y" * 200_000, verify=lambda tmp: seen.append(os.path.getsize(tmp)))
    reader.join(10)
    assert got == [b"y" * 200_000] and seen == [200_000]     # verified complete before any byte went out
    assert node(fifo) == before and os.listdir(tmp_path) == ["pipe"] and not left_behind()


def test_a_fifo_that_no_process_reads_is_one_error_after_the_bound(tmp_path, monkeypatch, left_behind):
    """Opened without blocking and tried again for FIFO_READER_WAIT seconds (small here), then one
    error naming it; nothing is left behind, the FIFO stays."""
    monkeypatch.setattr(fileio, "FIFO_READER_WAIT", 0.3)
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    before = node(fifo)
    with pytest.raises(OutputError) as err:
        write(fifo, label="--json")
    assert str(err.value) == (f"--json '{fifo}' is a FIFO that no process reads (none opened it for reading "
                              "within 0.3 s); start its reader first (nothing was written)")
    assert node(fifo) == before and os.listdir(tmp_path) == ["pipe"] and not left_behind()


def test_a_fifo_reader_that_comes_during_the_wait_gets_the_bytes(tmp_path, monkeypatch, left_behind):
    monkeypatch.setattr(fileio, "FIFO_READER_WAIT", 120)
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    got, polled = [], threading.Event()
    sleep = fileio.time.sleep

    def polling(seconds):          # the writer found no reader and waits: the reader comes now
        polled.set()
        sleep(seconds)
    monkeypatch.setattr(fileio.time, "sleep", polling)
    reader = threading.Thread(target=lambda: polled.wait(60) and got.append(open(fifo, "rb").read()))
    reader.start()
    write(fifo, "late reader\n")
    reader.join(60)
    assert polled.is_set() and got == [b"late reader\n"] and not left_behind()


def test_a_socket_and_a_folder_are_one_error_each(tmp_path, left_behind):
    sock_path = str(tmp_path / "s.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(sock_path)
    try:
        before = node(sock_path)
        with pytest.raises(OutputError, match=f"cannot write '{sock_path}': No such device or address"):
            write(sock_path)
        assert node(sock_path) == before
    finally:
        sock.close()
    with pytest.raises(OutputError, match="is a folder; expected a file name"):
        write(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["s.sock"] and not left_behind()


def test_links_stay_links(tmp_path):
    """A link to a device or to one of this process's open files is written through; a link to a
    regular file keeps pointing at it, and that file is replaced atomically."""
    null = device(tmp_path, "null", 3)
    os.symlink(null, tmp_path / "to-null")
    read_end, write_end = os.pipe()
    os.symlink(f"/proc/self/fd/{write_end}", tmp_path / "to-pipe")
    (tmp_path / "real.json").write_text("old")
    os.symlink("real.json", tmp_path / "to-file")
    try:
        write(tmp_path / "to-null")
        write(tmp_path / "to-pipe", "through the pipe\n")
        os.close(write_end)
        assert os.read(read_end, 1000) == b"through the pipe\n"
    finally:
        os.close(read_end)
    write(tmp_path / "to-file", "new")
    assert [os.readlink(tmp_path / n) for n in ("to-null", "to-pipe", "to-file")] == \
        [null, f"/proc/self/fd/{write_end}", "real.json"]
    assert (tmp_path / "real.json").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["null", "real.json", "to-file", "to-null", "to-pipe"]


# ------------------------------------------------------------------------------------------------
# Names: any name the OS accepts, for every writer (in-process)

NAMES = ["weights", "weights.CKPT", "weights.ckpt.bak", "wé ights.ckpt", "-", "ünï code/w.ckpt",
         "a folder with spaces/w"]


@pytest.mark.parametrize("name", NAMES)
def test_any_file_name_holds_a_checkpoint_that_reads_back(name, tmp_path, left_behind):
    import mindspore as ms
    path = tmp_path / name
    save_atomic([{"name": "w", "data": ms.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))}], str(path))
    np.testing.assert_array_equal(read_checkpoint(str(path))["w"].asnumpy(), np.arange(6).reshape(2, 3))
    assert sorted(os.listdir(path.parent)) == [os.path.basename(name)] and not left_behind()


def test_mindir_export_to_a_folder_and_name_mindspore_refuses(tmp_path, left_behind):
    import mindspore as ms
    from mindspore import nn
    from src.convert.mindir import export_atomic, verify_export
    folder = tmp_path / "ex port é"
    folder.mkdir()
    net = nn.Dense(4, 3)
    x = ms.Tensor(np.ones((2, 4), np.float32))
    final = str(folder / "mödel v2.MINDIR")
    checked = []
    export_atomic(net, [x], None, "MINDIR", check=lambda tmp: checked.append(verify_export(net, tmp, [[x]])),
                  final=final)
    assert checked == [0.0] and os.listdir(folder) == ["mödel v2.MINDIR"] and not left_behind()


def test_a_name_over_the_limit_is_one_error_naming_the_path(tmp_path):
    for path, what in ((tmp_path / f"{LONG}.json", "the name 'xxxx"), (tmp_path / LONG / "r.json", "the name 'xxxx"),
                       (tmp_path / "/".join(["d" * 200] * 21) / "r.json", "the path has")):
        with pytest.raises(OutputError) as err:
            write(path)
        assert str(err.value).startswith("output '") and what in str(err.value)
        assert "characters)" in str(err.value) and len(str(err.value)) < 400
    assert os.listdir(tmp_path) == []


def test_a_failing_writer_leaves_nothing_in_an_unusual_folder(tmp_path, left_behind):
    folder = tmp_path / "sp ace é"
    folder.mkdir()
    (folder / "r.json").write_text("old")
    with pytest.raises(OutputError, match="cannot write '.*r.json': No space left on device"):
        with atomic_output(folder / "r.json") as tmp:
            open(tmp, "w").write("half")
            raise OSError(28, "No space left on device")
    assert os.listdir(folder) == ["r.json"] and (folder / "r.json").read_text() == "old" and not left_behind()


# ------------------------------------------------------------------------------------------------
# The entry scripts (a new process where the device nodes, the pipes or the exit status need one)

PRIVATE_DEV = """
set -e
mount -t tmpfs convmlp-test-dev /dev
for n in null:3 zero:5 full:7 random:8 urandom:9; do mknod -m 666 /dev/${n%%:*} c 1 ${n##*:}; done
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mkdir /dev/shm; mount -t tmpfs shm /dev/shm
set +e
"$@"
rc=$?
echo "after: rc=$rc $(stat -c %F /dev/stdout /dev/null /dev/full | tr '\\n' ',')" >&2
"""


def in_private_dev(script, *args):
    """``python SCRIPT ARGS`` in a private mount namespace whose /dev is the test's own tmpfs; the
    last stderr line says the exit status and what /dev/stdout, /dev/null and /dev/full are after."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("no private mount namespace (unshare -m) here")
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE_DEV, "sh", sys.executable,
           os.path.join(REPO, script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    *err, last = proc.stderr.rstrip("\n").split("\n")
    rc = int(last.split("rc=")[1].split()[0])
    kinds = last.split(" ", 2)[2]
    return subprocess.CompletedProcess(cmd, rc, proc.stdout, "\n".join(err) + "\n"), kinds


KEPT = "symbolic link,character special file,character special file,"


def test_an_unwritable_target_is_one_error_and_the_old_file_stays(tmp_path):
    """A read-only folder (a read-only bind mount in a private mount namespace: root may write
    anywhere else)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("no private mount namespace (unshare -m) here")
    (tmp_path / "r.json").write_text("old")
    code = (f"import sys; sys.path.insert(0, {REPO!r})\n"
            "from src.platform.errors import run_cli\nfrom src.platform.fileio import atomic_output\n"
            "def main(argv):\n    with atomic_output(argv[0], label='--json') as tmp:\n"
            "        open(tmp, 'w').write('new')\nrun_cli(main, sys.argv[1:])\n")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           'mount --bind -o ro "$1" "$1" && exec "$2" -c "$3" "$1/r.json"', "sh", str(tmp_path),
                           sys.executable, code], capture_output=True, text=True, timeout=300)
    assert_user_error(proc, f"cannot write '{tmp_path}/r.json': Read-only file system")
    assert os.listdir(tmp_path) == ["r.json"] and (tmp_path / "r.json").read_text() == "old"


def test_infer_json_to_dev_stdout_keeps_the_link_and_prints_the_json(tiny_ckpt, image_folder):
    proc, kinds = in_private_dev("infer.py", "--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, image_folder,
                                 "--json", "/dev/stdout")
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = proc.stdout.index("{\n")
    result = json.loads(proc.stdout[start:proc.stdout.rindex("}\n") + 2])
    assert [r["file"] for r in result["results"]] == [os.path.join(image_folder, f"img{i}.png") for i in range(2)]
    assert kinds == KEPT


def test_evl_json_to_dev_full_is_one_error_and_the_node_stays(tiny_ckpt, tiny_cifar10):
    proc, kinds = in_private_dev("evl.py", "--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, "--train_data_path",
                                 tiny_cifar10, "--val_data_path", tiny_cifar10, "--json", "/dev/full")
    assert_user_error(proc, "cannot write '/dev/full': No space left on device")
    assert "accuracy:{'acc': " in proc.stdout and kinds == KEPT


def test_pth2ckpt_dst_dev_null_writes_in_place_and_exits_0(tiny):
    proc, kinds = in_private_dev("pth2ckpt.py", "--src", tiny["pth"], "--dst", "/dev/null", *tiny["flags"])
    assert proc.returncode == 0 and "written     : /dev/null (" in proc.stdout, proc.stderr[-3000:]
    assert kinds == KEPT


def test_infer_json_dash_is_the_whole_standard_output(tiny_ckpt, image_folder, tmp_path):
    proc = run_script("infer.py", "--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, image_folder, "--json", "-",
                      cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)                      # nothing else on stdout
    assert len(result["results"]) == 2 and "img0.png" in proc.stderr and os.listdir(tmp_path) == []


def test_pth2ckpt_names_the_writer_could_not_take(tiny, tmp_path):
    """No extension, upper-case and extra extensions, a folder with a space and non-ASCII letters:
    written, read back by the reverse conversion; a 300-character name is one error."""
    folder = tmp_path / "wéights dir"
    folder.mkdir()
    proc = run_main("pth2ckpt.py", "--src", tiny["pth"], "--dst", folder / "weights.ckpt.bak", *tiny["flags"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    back = run_main("pth2ckpt.py", "--reverse", "--src", folder / "weights.ckpt.bak", "--dst", folder / "BACK.PTH")
    assert back.returncode == 0, back.stderr[-3000:]
    assert sorted(os.listdir(folder)) == ["BACK.PTH", "weights.ckpt.bak"]
    too_long = run_main("pth2ckpt.py", "--reverse", "--src", folder / "weights.ckpt.bak", "--dst",
                        folder / f"{LONG}.pth")
    assert_user_error(too_long, "--dst '", "has 304 bytes, more than this file system takes")
    assert sorted(os.listdir(folder)) == ["BACK.PTH", "weights.ckpt.bak"]


def test_train_with_a_run_folder_name_over_the_limit_is_one_error(tiny_cifar10, tmp_path):
    proc = run_main("train.py", "--save_checkpoint_path", tmp_path / LONG, "--device_target", "CPU",
                    "--train_data_path", tiny_cifar10, "--val_data_path", tiny_cifar10)
    assert_user_error(proc, "save_checkpoint_path '", "has 300 bytes, more than this file system takes")
    assert os.listdir(tmp_path) == []


def test_evl_json_to_a_fifo_that_no_process_reads_is_one_error(tiny_ckpt, tiny_cifar10, tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "FIFO_READER_WAIT", 0.5)
    fifo = str(tmp_path / "results")
    os.mkfifo(fifo)
    proc = run_main("evl.py", "--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, *data_flags(tiny_cifar10),
                    "--graph_cache", "false", "--json", fifo)
    assert_user_error(proc, f"--json '{fifo}' is a FIFO that no process reads (none opened it for reading within "
                      "0.5 s)")
    assert "accuracy:{'acc': " in proc.stdout and os.listdir(tmp_path) == ["results"]


@pytest.mark.parametrize("script,label", [("pth2ckpt.py", "--dst"), ("export.py", "export file")])
def test_other_outputs_to_a_fifo_that_no_process_reads_are_one_error(script, label, tiny, tiny_ckpt, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(fileio, "FIFO_READER_WAIT", 0.3)
    fifo = str(tmp_path / ("weights.ckpt" if script == "pth2ckpt.py" else "model.mindir"))
    os.mkfifo(fifo)
    args = {"pth2ckpt.py": ["--src", tiny["pth"], "--dst", fifo, *tiny["flags"]],
            "export.py": ["--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, "--file_name", fifo]}[script]
    proc = run_main(script, *args)
    assert_user_error(proc, f"{label} '{fifo}' is a FIFO that no process reads (none opened it for reading within "
                      "0.3 s); start its reader first")
    assert os.listdir(tmp_path) == [os.path.basename(fifo)]


def test_infer_json_to_a_fifo_with_a_reader_delivers_the_json(tiny_ckpt, image_folder, tmp_path):
    fifo = str(tmp_path / "predictions")
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    proc = ok(run_main("infer.py", "--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, image_folder, "--json", fifo))
    reader.join(60)
    result = json.loads(got[0])
    assert [r["file"] for r in result["results"]] == [os.path.join(image_folder, f"img{i}.png") for i in range(2)]
    assert f"wrote {fifo}" in proc.stdout and os.listdir(tmp_path) == ["predictions"]


# ------------------------------------------------------------------------------------------------
# A pipe whose reader has gone: the script ends quietly, exit status 141 (as a Unix tool)

def assert_quiet_end(proc):
    assert proc.returncode == EXIT_BROKEN_PIPE == 141, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    for text in (proc.stdout, proc.stderr):
        assert "Traceback" not in text and "Exception ignored" not in text and "error:" not in text, text


def test_evl_piped_into_head_1_ends_quietly(tiny_ckpt, tiny_cifar10):
    """``evl.py | head -1``: the reader leaves after the first log line, the evaluation's progress
    and results then meet a closed pipe."""
    proc = run_script_reader_leaves("evl.py", "--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS,
                                    *data_flags(tiny_cifar10))
    assert_quiet_end(proc)
    assert proc.stdout.count("\n") == 1 and f"evaluating {tiny_ckpt}" in proc.stdout


def test_infer_piped_into_head_1_ends_quietly(tiny_ckpt, image_folder):
    """``infer.py | head -1``: the predictions, buffered, meet a closed pipe when they are written."""
    proc = run_script_reader_leaves("infer.py", "--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS, image_folder)
    assert_quiet_end(proc)
    assert proc.stdout.count("\n") == 1 and "classifying 2 image(s)" in proc.stdout


def test_dataset_check_into_a_pipe_closed_before_it_writes_ends_quietly(tiny_cifar10):
    """Its report goes out in one piece at the end (a pipe is block-buffered), so ``| head -1`` reads
    all of it and the script exits 0; a reader gone before that is the closed pipe."""
    proc = run_script_reader_leaves("dataset.py", "check", "--path", tiny_cifar10, lines=0)
    assert_quiet_end(proc)


def test_evl_with_json_on_stdout_and_its_messages_into_head_1_ends_quietly(tiny_ckpt, tiny_cifar10):
    """``evl.py --json - 2>&1 >out | head -1``: the messages (on stderr) meet a closed pipe; the JSON
    (after the evaluation) is never written."""
    proc = run_script_reader_leaves("evl.py", "--checkpoint_path", tiny_ckpt, *TINY_CKPT_FLAGS,
                                    *data_flags(tiny_cifar10), "--json", "-", stream="stderr")
    assert_quiet_end(proc)
    assert f"evaluating {tiny_ckpt}" in proc.stderr and proc.stdout == ""


class ClosedPipe(io.StringIO):
    """A standard stream whose reader has gone; with `buffered`, a write is kept until the flush."""

    def __init__(self, buffered=False):
        super().__init__()
        self.buffered = buffered

    def write(self, text):
        if not self.buffered:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)

    def flush(self):
        if self.getvalue() or not self.buffered:
            raise BrokenPipeError(32, "Broken pipe")


@pytest.fixture
def cli_state():
    """run_cli's signal handlers and the log's handlers put back after the test."""
    import logging
    import signal
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook, logger = sys.unraisablehook, logging.getLogger("convmlp")
    log_handlers = logger.handlers[:]
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    sys.unraisablehook, logger.handlers[:] = hook, log_handlers


@pytest.mark.parametrize("where", ["print", "buffered", "log", "error line"])
def test_run_cli_ends_quietly_on_a_closed_pipe_wherever_it_is_met(where, monkeypatch, capsys, cli_state):
    """Met by a print, by the final flush of what was buffered, by a log line (the logger's
    handler) or by the error line on stderr: exit status 141 and no word."""
    from src.platform.console import get_logger
    from src.platform.errors import ConfigError, run_cli
    monkeypatch.setattr(sys, "stderr" if where == "error line" else "stdout", ClosedPipe(buffered=where == "buffered"))

    def main(argv):
        if where in ("print", "buffered"):
            print("accuracy")
        elif where == "log":
            get_logger(0).info("evaluating")
        else:
            raise ConfigError("a bad value")
        return 0
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [])
    monkeypatch.undo()
    assert exit_.value.code == EXIT_BROKEN_PIPE and capsys.readouterr() == ("", "")


def test_a_log_line_of_another_thread_into_a_closed_pipe_is_dropped_quietly(monkeypatch, capsys, cli_state):
    from src.platform.console import get_logger
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    logger, raised = get_logger(0), []

    def log():
        try:
            logger.info("from a worker")
        except BaseException as exc:
            raised.append(exc)
    worker = threading.Thread(target=log)
    worker.start()
    worker.join()
    logger.info("dropped too")                       # the handler stopped writing to the closed pipe
    monkeypatch.undo()
    assert raised == [] and capsys.readouterr() == ("", "")


# ------------------------------------------------------------------------------------------------
# Private scratch folders: a killed writer's are removed by the next run, a live one's never

WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from src.platform.fileio import atomic_output
with atomic_output("/dev/null") as tmp:      # a stream: the content is made in a private folder
    open(tmp, "w").write("half")
    print("writing", flush=True)
    time.sleep(600)
"""


def start_writer(temp):
    """A process in the middle of writing to /dev/null, its private folder in `temp`."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=REPO)], env=dict(os.environ, TMPDIR=str(temp)),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    return proc


def test_the_next_write_removes_a_killed_writers_scratch_and_nothing_else(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    foreign = {"convmlp-out-1-notours": "data", "convmlp-out-abcd1234": "output.json", "other-program": "x"}
    for name, inside in foreign.items():     # our name pattern without our lock file, an older name, others
        (temp / name).mkdir()
        (temp / name / inside).write_text("theirs")
    (temp / "convmlp-out-2-file").write_text("a file, not a folder")
    killed, live = start_writer(temp), start_writer(temp)
    try:
        killed.kill()                         # kill -9 in the middle of the write
        killed.wait()
        scratch = {p.pid: [n for n in os.listdir(temp) if n.startswith(f"convmlp-out-{p.pid}-")]
                   for p in (killed, live)}
        assert [len(v) for v in scratch.values()] == [1, 1]
        assert sorted(os.listdir(temp / scratch[killed.pid][0])) == ["output", "owner.lock"]
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        write(tmp_path / "result.json")       # the next run, writing a regular file
        assert sorted(os.listdir(temp)) == sorted([*foreign, "convmlp-out-2-file", *scratch[live.pid]])
        assert all((temp / name / inside).read_text() == "theirs" for name, inside in foreign.items())
    finally:
        live.kill()
        live.wait()
    write(tmp_path / "result.json")           # the live writer is gone now: its folder is stale too
    assert sorted(os.listdir(temp)) == sorted([*foreign, "convmlp-out-2-file"])


def test_a_scratch_folder_is_stale_by_its_lock_not_by_its_process_id(tmp_path):
    """A dead writer's process id may belong to another process now (here: this one): the folder is
    still stale, since no process holds its lock."""
    stale = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-reused"
    stale.mkdir()
    (stale / "owner.lock").write_text(f"{os.getpid()}\n")
    assert fileio.remove_stale_scratch(str(tmp_path)) == [stale.name] and os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# dataset.py generate: the folder holds exactly what was reported

def test_generate_over_an_earlier_generation_leaves_exactly_the_new_records(tmp_path):
    from src.data import cifar
    out = tmp_path / "demo"
    first = run_script("dataset.py", "generate", "--out", out, "--train", "61", "--val", "32")
    assert first.returncode == 0, first.stderr
    folder = out / "cifar-10-batches-bin"
    (folder / "my_notes.txt").write_text("the user's")
    second = run_script("dataset.py", "generate", "--out", out, "--train", "10", "--val", "0", "--files", "2")
    assert second.returncode == 0 and "wrote 10 train + 0 val" in second.stdout, second.stderr
    assert sorted(os.listdir(folder)) == ["batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin", "my_notes.txt"]
    assert len(cifar.read_split(str(folder), "cifar10", "train")) == 10
    assert (folder / "my_notes.txt").read_text() == "the user's"


def test_an_image_tree_generated_again_holds_exactly_the_new_images(tmp_path):
    from src.data.imagefolder import scan_tree
    from src.data.synthetic import write_image_tree
    folder = tmp_path / "images"
    write_image_tree(str(folder), 4, 40, 12, seed=1)
    (folder / "train" / "synthetic_3" / "my_photo.jpg").write_bytes(b"the user's")
    paths = write_image_tree(str(folder), 2, 6, 0, seed=2)
    assert sorted(os.listdir(folder)) == [".generated-image-tree", "train"]       # no val split left
    assert sorted(os.listdir(folder / "train")) == ["synthetic_0", "synthetic_1", "synthetic_3"]
    assert os.listdir(folder / "train" / "synthetic_3") == ["my_photo.jpg"]       # the user's file stays
    tree = scan_tree(paths["train"])
    assert tree.classes == ["synthetic_0", "synthetic_1", "synthetic_3"]
    assert sum(1 for p in (folder / "train").rglob("*.*") if p.name != "my_photo.jpg") == 6


def test_generating_an_image_tree_checks_the_disk_space_first(tmp_path, monkeypatch):
    import shutil as sh
    from helpers import run_main
    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage._replace(free=1000))
    proc = run_main("dataset.py", "generate", "--format", "imagefolder", "--out", tmp_path / "t", "--train", "10",
                    "--val", "0")
    assert_user_error(proc, "--train 10 --val 0 needs", "of disk space in", "give smaller counts or another --out")
    assert not (tmp_path / "t").exists()


def test_generate_refuses_a_folder_it_did_not_write(tmp_path):
    from src.data import synthetic
    from src.platform.errors import DataError
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(b"\0" * 3073)
    with pytest.raises(DataError, match="already holds data that was not generated"):
        synthetic.write_synthetic(str(folder), "cifar10", 10, 0)
    assert os.listdir(folder) == ["data_batch_1.bin"]


# ------------------------------------------------------------------------------------------------
# ModelArts: only the run's outputs go to train_url

def test_only_the_runs_outputs_are_uploaded(tmp_path, monkeypatch):
    import logging
    import types
    from src.train import modelarts
    run = tmp_path / "output"
    run.mkdir()
    outputs = ["best.ckpt", "config.yaml", "curves.png", "epoch_0001.ckpt", "epoch_0002.ckpt", "last.ckpt",
               "metrics.csv", "train.log"]
    for name in outputs + [".train.lock", ".last.tmp-123-0a1b2c3d.ckpt", "notes.txt"]:
        (run / name).write_text(name)
    uploads = []

    def copy_parallel(src_url, dst_url):
        uploads.append(sorted(os.listdir(src_url)))
        shutil.copytree(src_url, dst_url, dirs_exist_ok=True)
    fake = types.ModuleType("moxing")
    fake.file = types.SimpleNamespace(copy_parallel=copy_parallel)
    monkeypatch.setitem(sys.modules, "moxing", fake)
    cfg = types.SimpleNamespace(run_modelarts=True, train_url=str(tmp_path / "obs"), save_checkpoint_path=str(run))
    assert modelarts.sync_outputs(cfg, logging.getLogger("test_outputs"), rank=0)
    assert uploads == [outputs] and sorted(os.listdir(tmp_path / "obs")) == outputs
    assert sorted(os.listdir(run)) == sorted(outputs + [".train.lock", ".last.tmp-123-0a1b2c3d.ckpt", "notes.txt"])
