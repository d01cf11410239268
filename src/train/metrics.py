"""A training run's record: ``metrics.csv`` (one row per finished epoch) and ``curves.png``."""
import csv
import os
from typing import Dict, List, Optional

from ..platform.fileio import atomic_output

__all__ = ["MetricsLog"]


class MetricsLog:
    """Per-epoch metrics in ``metrics.csv`` (rewritten atomically) and ``curves.png``.

    train.py adds an epoch's row before writing the checkpoint that marks the epoch finished, and
    :meth:`resume` keeps only the rows up to the resumed checkpoint's epoch: whenever a run is
    killed, the resumed run has exactly one row per finished epoch."""

    CSV, PNG = "metrics.csv", "curves.png"
    FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "lr",
              "images_per_s", "epoch_time_s", "ema_val_loss", "ema_val_top1", "ema_val_top5"]

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
        for name in ("val_top1", "val_top5", "ema_val_top1"):
            if col(name)[0]:
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
