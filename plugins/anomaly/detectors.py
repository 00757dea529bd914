"""GRU anomaly detectors and their raw scores, in batch and one observation at a time.

- `NextStepForecaster` runs the GRU over the whole stream, carrying its state, and
  predicts the next observation; the raw score of an observation is its root-mean-square
  prediction error. Streaming carries the same state from piece to piece, so it equals
  batch scoring; the backbone must be unidirectional (a forecaster may not see the future).
- `WindowAutoencoder` encodes the last `window` observations into the GRU's final
  state and decodes them back; the raw score is the window's root-mean-square
  reconstruction error.
  Streaming keeps the last `window - 1` observations.

Both train on squared errors and score with their square root: the likelihood that
normalises raw scores fits a Gaussian to them, which suits root-mean-square errors far
better than their squares (whose rare large values swell its variance and hide the next
anomaly); `task.detector.error=squared` scores the squares (`ERRORS`). Both cost constant
time and memory per observation. Their inputs are the `n_features` scaled values of each
observation followed by `n_covariates` known covariates (calendar features); only the
values are predicted, reconstructed and scored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gru_suite.backbone import GRUBackbone, State, require_unidirectional
from gru_suite.config import check_choice
from gru_suite.task import BackboneFactory


ERRORS = ("rms", "squared")
"""What a raw score is: the root-mean-square error (`rms`) or its square, the mean squared error (`squared`: the raw
scores of checkpoints trained before `task.detector.error` existed)."""


def _scored(mean_squares: Tensor, error: str) -> Tensor:
    """Mean squared errors as raw scores of the kind `error` (`ERRORS`)."""
    return mean_squares.sqrt() if error == "rms" else mean_squares


def squared_errors(scores: Tensor, error: str) -> Tensor:
    """Raw scores of the kind `error` back as the mean squared errors they were made from."""
    return scores.square() if error == "rms" else scores


class NextStepForecaster(nn.Module):
    """Predicts x[t+1] from x[0..t]; `forward(x)` returns predictions aligned with x."""

    def __init__(self, backbone: BackboneFactory, n_features: int, n_covariates: int = 0, error: str = "rms") -> None:
        super().__init__()
        self.n_features, self.error = n_features, error
        self.backbone = require_unidirectional(backbone(input_size=n_features + n_covariates),
                                               "task.detector.kind=forecaster")
        self.head = nn.Linear(self.backbone.output_size, n_features)

    def forward(self, x: Tensor, h0: State | None = None) -> Tensor:
        out, _ = self.backbone(x, h0=h0)
        return self.head(out)

    def loss(self, crops: Tensor, burn_in: int) -> Tensor:
        """Next-step MSE over each crop, after `burn_in` steps of context."""
        pred = self(crops[:, :-1])
        return (pred[:, burn_in:] - crops[:, 1 + burn_in :, : self.n_features]).pow(2).mean()

    def _errors(self, differences: Tensor) -> Tensor:
        return _scored(differences.pow(2).mean(-1), self.error)

    def score_chunk(self, x: Tensor, memory: tuple[State, Tensor] | None) -> tuple[Tensor, tuple[State, Tensor]]:
        """Score the rows of `x` (T, F + C) that follow `memory` (the state and the last prediction;
        None at the start, where the first row scores 0), carrying the state on."""
        state, prediction = memory if memory is not None else (None, None)
        out, state = self.backbone(x.unsqueeze(0), h0=state)
        predictions = self.head(out[0])  # row t's prediction of row t + 1
        values = x[:, : self.n_features]
        if prediction is None:
            errors = torch.cat([values.new_zeros(1), self._errors(values[1:] - predictions[:-1])])
        else:
            errors = self._errors(values - torch.cat([prediction.unsqueeze(0), predictions[:-1]]))
        return errors, (state, predictions[-1])

    def raw_scores(self, x: Tensor) -> Tensor:
        """Error of each observation's prediction (B, T), of the kind `error`; the first scores 0."""
        errors = self._errors(x[:, 1:, : self.n_features] - self(x[:, :-1]))
        return torch.cat([errors.new_zeros(x.size(0), 1), errors], dim=1)


WINDOWS_PER_PASS = 4096


class WindowAutoencoder(nn.Module):
    """Sequence autoencoder over windows of `window` observations."""

    def __init__(self, backbone: BackboneFactory, n_features: int, window: int, n_covariates: int = 0,
                 error: str = "rms") -> None:
        super().__init__()
        self.window, self.n_features, self.error = window, n_features, error
        self.backbone: GRUBackbone = backbone(input_size=n_features + n_covariates)
        self.decoder: GRUBackbone = backbone(input_size=self.backbone.output_size)
        self.head = nn.Linear(self.decoder.output_size, n_features)

    def forward(self, windows: Tensor) -> Tensor:
        _, h_n = self.backbone(windows)
        code = self.backbone.last_hidden(h_n)
        out, _ = self.decoder(code.unsqueeze(1).expand(-1, windows.size(1), -1).contiguous())
        return self.head(out)

    def loss(self, crops: Tensor, burn_in: int) -> Tensor:
        windows = crops.unfold(1, self.window, self.window).transpose(2, 3).reshape(-1, self.window, crops.size(-1))
        return self.window_errors(windows).mean()

    def window_errors(self, windows: Tensor) -> Tensor:
        return (self(windows) - windows[..., : self.n_features]).pow(2).mean(dim=(1, 2))

    def score_chunk(self, x: Tensor, memory: Tensor | None) -> tuple[Tensor, Tensor]:
        """Reconstruction errors of the windows ending at the rows of `x` (T, F + C), after the
        last `window - 1` rows kept in `memory` (0 until a window is full)."""
        context = torch.cat([memory, x]) if memory is not None else x
        scores = self.raw_scores(context.unsqueeze(0))[0, len(context) - len(x) :]
        return scores, context[max(0, len(context) - self.window + 1) :]

    def raw_scores(self, x: Tensor) -> Tensor:
        """Reconstruction error of the window ending at each observation (B, T), of the kind `error`;
        0 until one is full. Windows run through the networks `WINDOWS_PER_PASS` at a time: a long series'
        windows together would hold hundreds of times the series in memory."""
        batch, steps, features = x.shape
        scores = x.new_zeros(batch, steps)
        if steps >= self.window:
            windows = x.unfold(1, self.window, 1).transpose(2, 3)  # (B, T - w + 1, w, F), a view
            errors = [self.window_errors(part.reshape(-1, self.window, features)).reshape(batch, -1)
                      for part in windows.split(max(1, WINDOWS_PER_PASS // batch), dim=1)]
            scores[:, self.window - 1 :] = _scored(torch.cat(errors, dim=1), self.error)
        return scores


class StreamingScorer:
    """Raw scores of a stream fed in pieces, equal to the detector's batch `raw_scores`.

    The detector's `score_chunk(x, memory) -> (scores, memory)` does the work; the
    memory (GRU state and last prediction, or the last window's rows) has a fixed size.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self._memory: Any = None

    @torch.no_grad()
    def scores(self, x: Tensor) -> Tensor:
        """Scores of the next rows `x` (T, F + C), already scaled."""
        scores, self._memory = self.model.score_chunk(x, self._memory)
        return scores

    def update(self, x_t: Tensor) -> float:
        """Score one observation `x_t` (F + C,), already scaled."""
        return float(self.scores(x_t.unsqueeze(0))[0])


def shortest_crop(kind: str, window: int, burn_in: int) -> int:
    """The fewest rows a crop needs for a defined loss: a window (autoencoder), or `burn_in` rows of context
    plus an input and the row it predicts (forecaster)."""
    return window if kind == "autoencoder" else burn_in + 2


def unscored_rows(kind: str, window: int) -> int:
    """Leading rows of a series that a detector cannot score yet (their raw score is 0): the first, which
    nothing predicts (forecaster), or those before the first full window (autoencoder)."""
    return window - 1 if kind == "autoencoder" else 1


DETECTORS = ("forecaster", "autoencoder")


def build_detector(
    kind: str, backbone: BackboneFactory, n_features: int, window: int, n_covariates: int = 0, error: str = "rms"
) -> nn.Module:
    """`forecaster` or `autoencoder` (`DETECTORS`), scoring errors of the kind `error` (`ERRORS`)."""
    check_choice(error, ERRORS, "task.detector.error")
    if check_choice(kind, DETECTORS, "task.detector.kind") == "forecaster":
        return NextStepForecaster(backbone, n_features, n_covariates, error)
    return WindowAutoencoder(backbone, n_features, window, n_covariates, error)
