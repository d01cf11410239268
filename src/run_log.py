"""What a training run tells a person: log lines, the in-epoch progress bar, ``metrics.csv`` and
``curves.png``. Only rank 0 writes files and progress; other ranks log warnings and errors."""
import csv
import logging
import os
import sys
import time
from typing import Dict, List, Optional

from .fileio import atomic_output

__all__ = ["get_logger", "Progress", "MetricsLog"]


def get_logger(rank: int = 0, log_file: Optional[str] = None) -> logging.Logger:
    """A logger printing ``HH:MM:SS message`` to stdout (rank 0) and to ``log_file``."""
    logger = logging.getLogger("convmlp")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s" if rank == 0 else
                            f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S")
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(fmt)
    logger.addHandler(h)
    if log_file and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = _FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


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


class MetricsLog:
    """Per-epoch metrics in ``metrics.csv`` (rewritten atomically) and ``curves.png``.

    train.py adds an epoch's row before writing the checkpoint that marks the epoch finished, and
    :meth:`resume` keeps only the rows up to the resumed checkpoint's epoch: whenever a run is
    killed, the resumed run has exactly one row per finished epoch."""

    CSV, PNG = "metrics.csv", "curves.png"
    FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "lr",
              "images_per_s", "epoch_time_s"]

    def __init__(self, save_dir: str, rows: Optional[List[Dict]] = None):
        self.save_dir = save_dir
        self.csv_path = os.path.join(save_dir, self.CSV)
        self.png_path = os.path.join(save_dir, self.PNG)
        self.rows = list(rows or [])

    @classmethod
    def resume(cls, save_dir: str, up_to_epoch: int) -> "MetricsLog":
        """Reload the rows of a resumed run, dropping epochs after the checkpoint's."""
        path = os.path.join(save_dir, cls.CSV)
        rows = []
        if os.path.isfile(path):
            with open(path, newline="") as f:
                for r in csv.DictReader(f):
                    try:
                        if int(r["epoch"]) <= up_to_epoch:
                            rows.append(r)
                    except (KeyError, ValueError):
                        continue
        return cls(save_dir, rows)

    def add(self, row: Dict):
        self.rows.append(row)
        with atomic_output(self.csv_path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore")
                w.writeheader()
                for r in self.rows:
                    w.writerow(r)
        self._plot()

    def _plot(self):
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return

        def col(name):
            xs, ys = [], []
            for r in self.rows:
                v = r.get(name)
                if v not in (None, ""):
                    xs.append(int(r["epoch"]))
                    ys.append(float(v))
            return xs, ys

        fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
        for name in ("train_loss", "val_loss"):
            ax[0].plot(*col(name), marker="o", label=name)
        ax[0].set_title("loss")
        for name in ("val_top1", "val_top5"):
            ax[1].plot(*col(name), marker="o", label=name)
        ax[1].set_title("validation accuracy")
        ax[2].plot(*col("lr"), marker="o", label="lr")
        ax[2].set_title("learning rate (end of epoch)")
        for a in ax:
            a.set_xlabel("epoch")
            a.grid(alpha=0.3)
            a.legend()
        fig.tight_layout()
        try:
            with atomic_output(self.png_path) as tmp:
                fig.savefig(tmp, dpi=80)
        finally:
            plt.close(fig)
