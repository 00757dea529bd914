"""Data plumbing shared by tasks: a DataModule over named datasets loaded in whole batches."""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from gru_suite.timeseries import batch_loader

STAGES = ("train", "val", "test", "predict")


class SplitDataModule(pl.LightningDataModule):
    """Loaders for the datasets in `self.sets` ("train", "val", "test", "predict").

    Each loader gathers whole batches (`batch_loader`, no per-item collation);
    training batches are shuffled. `batch_sizes` overrides `batch_size` per stage.
    Subclasses fill `self.sets`, or override `dataset(stage)` to build sets lazily.
    """

    def __init__(self, batch_size: int, num_workers: int = 0, batch_sizes: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.batch_sizes = dict(batch_sizes or {})
        self.sets: dict[str, Dataset] = {}

    def dataset(self, stage: str) -> Dataset:
        return self.sets[stage]

    def _loader(self, stage: str) -> DataLoader:
        size = self.batch_sizes.get(stage, self.batch_size)
        return batch_loader(self.dataset(stage), size, shuffle=stage == "train", num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
