"""What every script tells a person while it works: log lines (``HH:MM:SS message``; a warning
``warning: message``) and the progress bar of a long loop. Only rank 0 of a data-parallel run prints its progress."""
import contextlib
import logging
import os
import sys
import threading
import time
from typing import Optional

__all__ = ["get_logger", "Progress", "messages_to_stderr"]


@contextlib.contextmanager
def messages_to_stderr(enabled: bool = True):
    """While the standard output carries data (``--json -``), what the script prints for a person
    (log lines, results) goes to stderr, so that ``script.py --json - | jq`` reads only the JSON."""
    if not enabled:
        yield
        return
    saved, sys.stdout = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


def get_logger(rank: int = 0, log_file: Optional[str] = None) -> logging.Logger:
    """A logger printing ``HH:MM:SS message`` to stdout (rank 0) and to ``log_file``; a warning is
    one line ``warning: message`` (as every warning of the product begins)."""
    logger = logging.getLogger("convmlp")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = _Formatter(rank)
    h = _StreamHandler(sys.stdout)
    h.setFormatter(fmt)
    logger.addHandler(h)
    if log_file and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = _FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


class _Formatter(logging.Formatter):
    """``HH:MM:SS message`` (``[rank k]`` before the message on rank k > 0); a warning as
    ``warning: message``, the first word every warning of the product starts with. Lines that any
    terminal and file can take: a character that UTF-8 cannot encode (the undecodable bytes of a
    file name, kept as surrogates) is written as its escape (``\\udcff``) instead of failing the
    line; names are quoted at the source (``errors.shown_name``)."""

    WARNING_WORD = "warning: "

    def __init__(self, rank=0):
        super().__init__("%(asctime)s " + (f"[rank {rank}] " if rank else "") + "%(message)s", "%H:%M:%S")
        self.rank = rank

    def format(self, record):
        if record.levelno == logging.WARNING:
            message = record.getMessage()
            if message.startswith(self.WARNING_WORD):
                message = message[len(self.WARNING_WORD):]
            line = self.WARNING_WORD + (f"[rank {self.rank}] " if self.rank else "") + message
            if record.exc_info:
                line += "\n" + self.formatException(record.exc_info)
        else:
            line = super().format(record)
        return line.encode("utf-8", "backslashreplace").decode("utf-8")


class _StreamHandler(logging.StreamHandler):
    """The log on the console. When it is a pipe whose reader has gone (``train.py | head``), the
    ``BrokenPipeError`` ends the script as any other output to that pipe does (run_cli: quietly,
    exit status 141) instead of logging's report of the error for every line; a log line of another
    thread is then dropped, and so are the lines after it."""

    broken = False

    def emit(self, record):
        if not self.broken:
            super().emit(record)

    def handleError(self, record):
        exc = sys.exc_info()[1]
        if not isinstance(exc, BrokenPipeError):
            return super().handleError(record)
        self.broken = True
        if threading.current_thread() is threading.main_thread():
            raise exc


class _FileHandler(logging.FileHandler):
    """A log file that, when it cannot be written (full disk, file system gone), says so once on
    stderr and stops, instead of printing a traceback for every line; stdout keeps the log."""

    broken = False

    def emit(self, record):
        if not self.broken:
            super().emit(record)

    def handleError(self, record):
        if self.broken:
            return
        self.broken = True
        exc = sys.exc_info()[1]
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"warning: cannot write the log file {self.baseFilename} ({why}); logging to stdout only",
              file=sys.stderr, flush=True)
        try:
            self.close()  # flushes what is buffered, which fails again on a full disk
        except Exception:
            pass


class Progress:
    """Progress inside an epoch: a tqdm bar when stdout is a terminal, else a plain line every
    ``log_interval`` steps (so logs of batch jobs stay readable)."""

    def __init__(self, total: int, desc: str, logger: logging.Logger, enabled: bool = True,
                 log_interval: int = 20):
        self.total, self.desc, self.logger = total, desc, logger
        self.enabled, self.log_interval = enabled, max(1, log_interval)
        self.bar = None
        self.n = 0
        self.t0 = time.time()
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix):
        self.n += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif self.n % self.log_interval == 0 or self.n == self.total:
            extra = " ".join(f"{k} {v:.4g}" for k, v in postfix.items())
            rate = self.n / max(1e-9, time.time() - self.t0)
            self.logger.info(f"{self.desc} {self.n}/{self.total} {extra} ({rate:.2f} it/s)")

    def close(self):
        if self.bar is not None:
            self.bar.close()
