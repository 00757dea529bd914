"""Callbacks the suite adds to Lightning's own."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class EpochThroughput(pl.Callback):
    """Log each epoch's training wall time and samples per second.

    `train/epoch_time_s` counts the training batches only (the clock stops when
    validation starts); `train/samples_per_s` is summed over DDP processes.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._elapsed: float | None = None
        self._samples = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._elapsed = None
        self._samples = getattr(pl_module, "samples_seen", 0)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._elapsed is None:
            self._elapsed = time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = self._elapsed if self._elapsed is not None else time.perf_counter() - self._start
        samples = getattr(pl_module, "samples_seen", 0) - self._samples
        pl_module.log("train/epoch_time_s", elapsed, sync_dist=True)
        pl_module.log("train/samples_per_s", samples / max(elapsed, 1e-9), reduce_fx="sum", sync_dist=True)
