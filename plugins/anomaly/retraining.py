"""Optional periodic retraining: fine-tune the detector on the most recent observations as a stream goes on.

`OnlineScorer` scores a stream (one observation, or the rows up to the next fine-tune, at a
time) and, every `every` observations after the probationary period, fine-tunes its own copy
of the detector on the last `window` observations it has seen. Batch scoring with retraining
runs the same scorer over the series, so streaming and batch results stay equal; memory stays
constant (the last `window` rows).
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gru_suite.errors import UserError
from gru_suite_plugins.anomaly.detectors import StreamingScorer


@dataclass(frozen=True)
class Retraining:
    every: int
    """Observations between fine-tunes."""
    window: int
    """Most recent observations learned from."""
    steps: int = 20
    lr: float = 1e-3
    crop_length: int = 64
    batch_size: int = 16
    burn_in: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise UserError(f"task.detector.retrain.every must be at least 1, got {self.every}")
        if self.window < self.crop_length + 1:
            raise UserError(f"task.detector.retrain.window must be above task.data.crop_length ({self.crop_length}), "
                            f"got {self.window}")

    def next_fine_tune(self, seen: int, probation: int) -> int:
        """How many observations a stream has seen when the next fine-tune after its first `seen` falls: every
        `every` observations scored after its `probation` ones."""
        return probation + self.every * (max(seen - probation, 0) // self.every + 1)


def fine_tune(model: nn.Module, recent: Tensor, settings: Retraining) -> None:
    """A few seeded Adam steps on random crops of `recent` (T, F + C); deterministic for equal input (dropout
    draws from torch's generator seeded here, restored afterwards, so a stream and a batch run agree)."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    model.train()
    # scoring may run under Lightning's inference mode; learning needs autograd and normal tensors
    devices = [recent.device.index or 0] if recent.is_cuda else []
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        recent = recent.clone()
        for _ in range(settings.steps):
            starts = torch.randint(0, len(recent) - settings.crop_length + 1, (settings.batch_size,),
                                   generator=generator)
            crops = torch.stack([recent[s : s + settings.crop_length] for s in starts.tolist()])
            loss = model.loss(crops, settings.burn_in)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


class OnlineScorer:
    """Raw scores of a stream, fine-tuning a private copy of the model on schedule."""

    def __init__(self, model: nn.Module, retraining: Retraining, probation: int) -> None:
        with torch.inference_mode(False):
            self.model = copy.deepcopy(model)
        self.scorer = StreamingScorer(self.model)
        self.retraining = retraining
        self.probation = probation
        self.recent: deque[Tensor] = deque(maxlen=retraining.window)
        self.seen = 0

    def update(self, x_t: Tensor) -> float:
        """Score one scaled observation (F + C,)."""
        return float(self._advance(x_t.unsqueeze(0))[0])

    def run(self, x: Tensor) -> np.ndarray:
        """Scores for a whole scaled series (T, F + C), as streaming it would give: the rows between
        two fine-tunes go through the model in one pass."""
        scores = []
        while len(x):
            next_fine_tune = self.retraining.next_fine_tune(self.seen, self.probation)
            chunk, x = x[: next_fine_tune - self.seen], x[next_fine_tune - self.seen :]
            scores.append(self._advance(chunk))
        return torch.cat(scores).float().cpu().numpy() if scores else np.zeros(0, dtype=np.float32)

    def _advance(self, rows: Tensor) -> Tensor:
        scores = self.scorer.scores(rows)
        self.recent.extend(rows)
        self.seen += len(rows)
        scored = self.seen - self.probation
        if scored > 0 and scored % self.retraining.every == 0 and len(self.recent) > self.retraining.crop_length:
            fine_tune(self.model, torch.stack(list(self.recent)), self.retraining)
        return scores
