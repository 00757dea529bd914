"""Helpers shared by the benchmark scripts (`forecasting.py`, `anomaly.py`).

The scripts run as `python benchmarks/<name>.py`, so this folder is on `sys.path`
and they import this module as `_common`. Heavy imports (Lightning) stay lazy.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["FitTest", "clean", "exit_code", "fit_and_test", "make_clock", "positive_int", "quiet", "quote", "table"]


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a thread count, say)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def quiet() -> None:
    """Keep stdout for tables and the JSON line; silence Lightning's info chatter and known warnings."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def exit_code(main: Callable[[], int]) -> int:
    """`main()`, its user error (a missing split, a wrong setting) one line on stderr and exit code 2."""
    from gru_suite.errors import UserError

    try:
        return main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def quote(value: str | Path) -> str:
    """A Hydra override value that survives spaces and brackets in paths."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def clean(value: Any) -> Any:
    """JSON-safe copy of `value`: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _cell(value: Any) -> str:
    """One table cell: None -> "-", NaN -> "n/a", floats to 4 significant digits, ints with separators."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print `rows` under `header` as an aligned text table headed `== title` (first column left-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(str(h)), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]  # rows may be none
    print(f"\n== {title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
    sys.stdout.flush()


def make_clock() -> pl.Callback:
    """A fresh EpochClock callback (the class needs pytorch_lightning, imported here, lazily).

    It records, per training epoch, `wall` and process-`cpu` seconds, the suite's
    logged `train/epoch_time_s` (`throughput`) and each validation's `val/loss`
    (`val_loss`).
    """
    import pytorch_lightning as pl

    class EpochClock(pl.Callback):
        """Wall and process-CPU seconds of each training epoch.

        An epoch runs from `on_train_epoch_start` to whichever comes first: the
        start of validation (so, like the suite's EpochThroughput, validation is
        not counted), the next epoch's start, or the end of training. Without
        validation that span holds every batch plus Lightning's per-epoch
        bookkeeping (epoch-end hooks, metric reduction, loader restart).
        Also collects the suite's own `train/epoch_time_s` and each validation's `val/loss`.
        """

        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self.throughput: list[float] = []
            self.val_loss: list[float] = []
            self._t: tuple[float, float] | None = None

        def _stop(self) -> None:
            if self._t is not None:
                wall, cpu = self._t
                self.wall.append(time.perf_counter() - wall)
                self.cpu.append(time.process_time() - cpu)
                self._t = None

        def _grab_throughput(self, trainer: pl.Trainer) -> None:
            value = trainer.callback_metrics.get("train/epoch_time_s")
            if value is not None and len(self.throughput) < len(self.wall):
                self.throughput.append(float(value))

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._stop()
            self._grab_throughput(trainer)
            self._t = (time.perf_counter(), time.process_time())

        def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.state.fn == "fit":
                self._stop()

        def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            value = trainer.callback_metrics.get("val/loss")
            if trainer.state.fn == "fit" and not trainer.sanity_checking and value is not None:
                self.val_loss.append(float(value))

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._stop()

        def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._grab_throughput(trainer)

    return EpochClock()


@dataclass
class FitTest:
    """The parts `fit_and_test` built and what it measured."""

    task: Any
    datamodule: Any
    module: Any
    trainer: Any
    clock: Any
    """The EpochClock of the fit (per-epoch seconds, val/loss)."""
    fit_wall_s: float
    fit_cpu_s: float
    test_wall_s: float
    best_epoch: int | None
    """The best checkpoint's epoch, counted from 0 as Lightning counts them (its file name, `best-007.ckpt`, and
    metrics.csv's `epoch`: 7 is the 8th epoch); None without a number in the name."""
    best_val_loss: float | None
    """The best monitored value (`best_model_score`)."""
    test_metrics: dict[str, float]
    pretrain_wall_s: float = 0.0
    """Seconds of the task's pre-training phase (0 without one)."""
    pretrain_loss: float | None = None


def fit_and_test(cfg: Any, seed: int) -> FitTest:
    """Build the run of `cfg` through `gru_suite.run` (progress bar and model summary off), fit it
    timed by an EpochClock, then run the task's test stage on the best checkpoint, as `gru-suite` does."""
    import pytorch_lightning as pl

    from gru_suite import run

    run.check_train_settings(cfg)  # every wrong setting named in one line, as `gru-suite` names them
    pl.seed_everything(seed, workers=True, verbose=False)
    task = run.build_task(cfg.task)
    datamodule = task.datamodule()
    module = run.build_module(cfg, task)
    quiet_trainer = {"enable_progress_bar": False, "enable_model_summary": False}
    pretrain_wall, pretrain_loss = time.perf_counter(), None
    if (phase := task.pretraining()) is not None:
        pretrain_loss = run.pretrain(cfg, module, phase, **quiet_trainer)
    pretrain_wall = time.perf_counter() - pretrain_wall
    trainer = run.build_trainer(cfg, **quiet_trainer)
    clock = make_clock()
    trainer.callbacks.append(clock)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=datamodule)
    fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt else ""
    wall = time.perf_counter()  # testing the best checkpoint also loads its weights into `module`
    with run.weight_averaging_ended(trainer):
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    test_wall = time.perf_counter() - wall
    stem = Path(best).stem.split("-")[-1] if best else ""
    return FitTest(
        task=task,
        datamodule=datamodule,
        module=module,
        trainer=trainer,
        clock=clock,
        fit_wall_s=fit_wall,
        fit_cpu_s=fit_cpu,
        test_wall_s=test_wall,
        best_epoch=int(stem) if stem.isdigit() else None,
        best_val_loss=float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None else None,
        test_metrics={k: float(v) for k, v in (tested[0] if tested else {}).items()},
        pretrain_wall_s=pretrain_wall,
        pretrain_loss=pretrain_loss,
    )
