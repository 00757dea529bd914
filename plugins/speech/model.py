"""The recogniser: a convolutional subsampling front-end, the shared GRU encoder and a CTC head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gru_suite.backbone import State
from gru_suite.task import BackboneFactory


class SpeechModel(nn.Module):
    """Log-mel frames (B, T, n_mels) -> per-output-frame log-probabilities over blank + characters.

    The front-end is a convolution whose kernel equals its stride (`subsample`
    frames in, one out), so it never looks across a group of frames: fed group by
    group it gives the same outputs, which lets a unidirectional model stream.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        n_mels: int,
        classes: int,
        subsample: int = 2,
        frontend_size: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if subsample < 1:
            raise ValueError(f"subsample must be at least 1, got {subsample}")
        self.subsample = subsample
        self.frontend = nn.Conv1d(n_mels, frontend_size, kernel_size=subsample, stride=subsample)
        self.backbone = backbone(input_size=frontend_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.output_size, classes)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames for `lengths` input frames (a partial last group is dropped)."""
        return lengths // self.subsample

    def forward(self, frames: Tensor, lengths: Tensor | None = None, h0: State | None = None) -> tuple[Tensor, Tensor | None, State]:
        """Log-probabilities (B, T // subsample, classes), their lengths, and the encoder's final state.

        Without `lengths` every sequence is taken as complete (streaming chunks).
        """
        x = F.gelu(self.frontend(frames.transpose(1, 2))).transpose(1, 2)
        out_lengths = None if lengths is None else self.output_lengths(lengths)
        out, h = self.backbone(x, out_lengths, h0)
        return self.head(self.dropout(out)).log_softmax(-1), out_lengths, h
