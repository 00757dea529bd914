"""GRU anomaly detectors and their raw scores, in batch and one observation at a time.

- `NextStepForecaster` runs the GRU over the whole stream, carrying its state, and
  predicts the next observation; the raw score of an observation is its squared
  prediction error. Streaming uses `GRUBackbone.step`, so it equals batch scoring.
- `WindowAutoencoder` encodes the last `window` observations into the GRU's final
  state and decodes them back; the raw score is the window's reconstruction error.
  Streaming keeps the last `window` observations in a ring buffer.

Both cost constant time and memory per observation.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor, nn

from gru_suite.backbone import GRUBackbone, State
from gru_suite.errors import UserError
from gru_suite.task import BackboneFactory


class NextStepForecaster(nn.Module):
    """Predicts x[t+1] from x[0..t]; `forward(x)` returns predictions aligned with x."""

    def __init__(self, backbone: BackboneFactory, n_features: int) -> None:
        super().__init__()
        self.backbone: GRUBackbone = backbone(input_size=n_features)
        self.head = nn.Linear(self.backbone.output_size, n_features)

    def forward(self, x: Tensor, h0: State | None = None) -> Tensor:
        out, _ = self.backbone(x, h0=h0)
        return self.head(out)

    def loss(self, crops: Tensor, burn_in: int) -> Tensor:
        """Next-step MSE over each crop, after `burn_in` steps of context."""
        pred = self(crops[:, :-1])
        return (pred[:, burn_in:] - crops[:, 1 + burn_in :]).pow(2).mean()

    def score_next(self, x_t: Tensor, memory: tuple[State, Tensor] | None) -> tuple[float, tuple[State, Tensor]]:
        """Score `x_t` (F,) against the last prediction, then predict the next one, carrying the state."""
        state, prediction = memory if memory is not None else (None, None)
        score = 0.0 if prediction is None else float((x_t - prediction).pow(2).mean())
        out, state = self.backbone.step(x_t.unsqueeze(0), state)
        return score, (state, self.head(out)[0])

    def raw_scores(self, x: Tensor) -> Tensor:
        """Squared error of each observation's prediction (B, T); the first scores 0."""
        pred = self(x[:, :-1])
        errors = (x[:, 1:] - pred).pow(2).mean(-1)
        return torch.cat([errors.new_zeros(x.size(0), 1), errors], dim=1)


class WindowAutoencoder(nn.Module):
    """Sequence autoencoder over windows of `window` observations."""

    def __init__(self, backbone: BackboneFactory, n_features: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.backbone: GRUBackbone = backbone(input_size=n_features)
        self.decoder: GRUBackbone = backbone(input_size=self.backbone.output_size)
        self.head = nn.Linear(self.decoder.output_size, n_features)

    def forward(self, windows: Tensor) -> Tensor:
        _, h_n = self.backbone(windows)
        code = self.backbone.last_hidden(h_n)
        out, _ = self.decoder(code.unsqueeze(1).expand(-1, windows.size(1), -1).contiguous())
        return self.head(out)

    def loss(self, crops: Tensor, burn_in: int) -> Tensor:
        windows = crops.unfold(1, self.window, self.window).transpose(2, 3).reshape(-1, self.window, crops.size(-1))
        return (self(windows) - windows).pow(2).mean()

    def window_errors(self, windows: Tensor) -> Tensor:
        return (self(windows) - windows).pow(2).mean(dim=(1, 2))

    def score_next(self, x_t: Tensor, memory: deque[Tensor] | None) -> tuple[float, deque[Tensor]]:
        """Reconstruction error of the window ending at `x_t` (F,); 0 until the window is full."""
        window = memory if memory is not None else deque(maxlen=self.window)
        window.append(x_t)
        if len(window) < self.window:
            return 0.0, window
        return float(self.window_errors(torch.stack(list(window)).unsqueeze(0))[0]), window

    def raw_scores(self, x: Tensor) -> Tensor:
        """Reconstruction error of the window ending at each observation (B, T); 0 until one is full."""
        batch, steps, features = x.shape
        scores = x.new_zeros(batch, steps)
        if steps >= self.window:
            windows = x.unfold(1, self.window, 1).transpose(2, 3)  # (B, T - w + 1, w, F)
            errors = self.window_errors(windows.reshape(-1, self.window, features))
            scores[:, self.window - 1 :] = errors.reshape(batch, -1)
        return scores


class StreamingScorer:
    """Raw scores one observation at a time, equal to the detector's batch `raw_scores`.

    The detector's `score_next(x_t, memory) -> (score, memory)` does the work; the
    memory (GRU state or window buffer) has a fixed size.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self._memory: Any = None

    @torch.no_grad()
    def update(self, x_t: Tensor) -> float:
        """Score observation `x_t` (already scaled, shape (F,))."""
        score, self._memory = self.model.score_next(x_t, self._memory)
        return score


def build_detector(kind: str, backbone: BackboneFactory, n_features: int, window: int) -> nn.Module:
    """`forecaster` or `autoencoder`."""
    if kind == "forecaster":
        return NextStepForecaster(backbone, n_features)
    if kind == "autoencoder":
        return WindowAutoencoder(backbone, n_features, window)
    raise UserError(f"task.detector.kind must be 'forecaster' or 'autoencoder', got {kind!r}")
