"""Running mean: a GRU reads random noise and outputs, at every step, the mean so far.

A complete third-party task in one module. It relies on the core for the shared
pieces: the backbone comes from the factory `build_model` receives, batches are
served by `gru_suite.data.batch_loader`, and the artifact is written with
`gru_suite.atomic`, so an interrupted run never leaves half a CSV behind.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gru_suite.atomic import atomic_path
from gru_suite.task import BackboneFactory, Stage, StepOutput, TaskPlugin
from gru_suite.data import batch_loader

STAGES = ("train", "val", "test")
CSV_COLUMNS = ("sequence", "step", "input", "target", "prediction")


class NoiseSequences(Dataset):
    """Inputs (N, T, 1) and their running means (N, T, 1).

    `__getitems__` gathers a whole batch in one indexing op, which is what
    `batch_loader` expects: no per-item collation.
    """

    def __init__(self, inputs: Tensor) -> None:
        self.inputs = inputs
        steps = torch.arange(1, inputs.size(1) + 1, dtype=inputs.dtype).view(1, -1, 1)
        self.targets = inputs.cumsum(dim=1) / steps

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs[index], self.targets[index]


class NoiseData(pl.LightningDataModule):
    """Train/val/test noise sequences drawn once from a seeded generator; predict uses test."""

    def __init__(self, seed: int, sizes: Sequence[int], length: int, batch_size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(sum(sizes), length, 1, generator=generator)
        self.sets = {stage: NoiseSequences(part) for stage, part in zip(STAGES, noise.split(list(sizes)))}
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.sets["train"], self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.sets["val"], self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.sets["test"], self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return batch_loader(self.sets["test"], self.batch_size)


class RunningMeanNet(nn.Module):
    """The shared backbone over the raw values, and a linear head at every step."""

    def __init__(self, backbone: BackboneFactory) -> None:
        super().__init__()
        self.backbone = backbone(input_size=1)
        self.head = nn.Linear(self.backbone.output_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.backbone(x)
        return self.head(out)


class RunningMeanTask(TaskPlugin):
    """Regress the running mean of standard normal noise at every step (MSE).

    Besides the loss it logs the MAE, the error at the last step, and the MSE
    of always answering zero (the prior mean) as a baseline to beat. The data
    needs no fitted state, so `state` stays empty and a checkpoint holds only
    the config and the weights.
    """

    numbers = (*TaskPlugin.numbers, ("data.length", int, 1))

    def datamodule(self) -> NoiseData:
        data = self.cfg.data
        return NoiseData(data.seed, list(data.sizes), data.length, data.batch_size)

    def build_model(self, backbone: BackboneFactory) -> RunningMeanNet:
        return RunningMeanNet(backbone)

    def step(self, model: RunningMeanNet, batch: tuple[Tensor, Tensor], stage: Stage) -> StepOutput:
        x, y = batch
        prediction = model(x)
        loss = F.mse_loss(prediction, y)
        if stage == "train":
            return StepOutput(loss, len(x))
        metrics = {
            "mae": F.l1_loss(prediction, y),
            "last_step_mse": F.mse_loss(prediction[:, -1], y[:, -1]),
            "zero_mse": y.pow(2).mean(),
        }
        return StepOutput(loss, len(x), metrics)

    def predict_step(self, model: RunningMeanNet, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch
        return {"input": x.cpu(), "target": y.cpu(), "prediction": model(x).float().cpu()}

    def write_predictions(
        self, predictions: list[Any], datamodule: pl.LightningDataModule, out_dir: Path
    ) -> list[Path]:
        """Write `running_mean.csv`: one row per (sequence, step)."""
        columns = {key: torch.cat([p[key] for p in predictions]).squeeze(-1) for key in CSV_COLUMNS[2:]}
        n_sequences, length = columns["input"].shape
        path = Path(out_dir) / "running_mean.csv"
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for n in range(n_sequences):
                values = zip(*(columns[key][n].tolist() for key in CSV_COLUMNS[2:]))
                writer.writerows((n, t + 1, *(f"{v:.6g}" for v in row)) for t, row in enumerate(values))
        return [path]
