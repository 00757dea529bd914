"""The recogniser: a convolutional subsampling front-end, the shared GRU encoder, an optional lookahead and a
CTC head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gru_suite.backbone import State, valid_mask
from gru_suite.task import BackboneFactory


class Lookahead(nn.Module):
    """DeepSpeech 2's row convolution (Amodei et al. 2016): output t mixes, feature by feature, the encoder
    outputs t .. t + `context`, so a unidirectional model sees a little of the future (and where the
    utterance ends: past the end it sees zeros) at a latency of `context` frames."""

    def __init__(self, size: int, context: int) -> None:
        super().__init__()
        if context < 0:
            raise ValueError(f"lookahead context must be at least 0, got {context}")
        self.context = context
        self.conv = nn.Conv1d(size, size, context + 1, groups=size, bias=False) if context else None
        if self.conv is not None:  # start as the identity: all weight on the current frame
            nn.init.zeros_(self.conv.weight)
            nn.init.ones_(self.conv.weight[:, :, 0])

    def forward(self, hidden: Tensor, complete: bool = True) -> Tensor:
        """(B, T, F) -> (B, T, F) when `complete` (the sequences end at T; zeros past their ends), else
        (B, T - context, F): only the frames whose whole lookahead is in `hidden`."""
        if self.conv is None:
            return hidden
        x = hidden.transpose(1, 2)
        if complete:
            x = F.pad(x, (0, self.context))
        return self.conv(x).transpose(1, 2)


@dataclass(frozen=True)
class Spectral:
    """Settings of `SpectralFrontend`: filters, their width in feature bins, and the bins max-pooled together."""

    channels: int = 32
    kernel: int = 5
    pool: int = 3

    def positions(self, features: int) -> int:
        """Filter positions along `features` bins (the convolution pads `kernel // 2` bins each side)."""
        return features + 2 * (self.kernel // 2) - self.kernel + 1

    def problem(self, features: int) -> tuple[str, str] | None:
        """(setting, what is wrong with it) when these settings cannot front `features` bins, else None.

        Pooling drops the positions past the last whole group of `pool`; that is allowed only while
        the filters still reach every bin from the positions kept.
        """
        for name in ("channels", "kernel", "pool"):
            if getattr(self, name) < 1:
                return name, f"must be at least 1, got {getattr(self, name)}"
        positions = self.positions(features)
        if self.pool > positions:
            return "pool", f"must be at most {positions} (filter positions over {features} bins), got {self.pool}"
        unreached = positions % self.pool - self.kernel // 2
        if unreached > 0:
            return "pool", (f"{self.pool} with kernel {self.kernel} leaves the top {unreached} of {features} bins "
                            f"unheard: use a pool that divides {positions}, or a wider kernel")
        return None


class SpectralFrontend(nn.Module):
    """A CNN acoustic model's front-end (Abdel-Hamid et al. 2014): filters slid along the mel axis, max-pooled
    over `pool` neighbouring bins, then projected to `size`. A voice whose formants sit a bin or two higher than
    the training voices' gives much the same output, which helps on speakers never heard in training.

    Takes and returns channels-first tensors like the `nn.Conv1d` it replaces: (B, features, T) ->
    (B, size, T // subsample). In time the kernel equals the stride, so it too streams group by group.
    """

    def __init__(self, features: int, size: int, subsample: int, settings: Spectral) -> None:
        super().__init__()
        if problem := settings.problem(features):
            raise ValueError(f"spectral front-end: {' '.join(problem)}")
        self.conv = nn.Conv2d(1, settings.channels, (subsample, settings.kernel), stride=(subsample, 1),
                              padding=(0, settings.kernel // 2))
        self.pool = nn.MaxPool2d((1, settings.pool))
        self.proj = nn.Linear(settings.channels * (settings.positions(features) // settings.pool), size)

    def forward(self, frames: Tensor) -> Tensor:
        x = self.pool(F.gelu(self.conv(frames.transpose(1, 2).unsqueeze(1))))  # (B, channels, T', bins)
        return self.proj(x.permute(0, 2, 1, 3).flatten(2)).transpose(1, 2)


class ReverseGradient(torch.autograd.Function):
    """The identity forward; backward, the gradient times -`scale` (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


class SpeakerAdversary(nn.Module):
    """Guesses the speaker of each encoder frame through a gradient reversal: the classifier learns to tell the
    training voices apart while the encoder, receiving its gradient times -`scale`, learns to hide them
    (speaker-invariant training, Meng et al. 2018)."""

    def __init__(self, size: int, speakers: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.classifier = nn.Sequential(nn.Linear(size, size), nn.ReLU(), nn.Linear(size, speakers))

    def forward(self, hidden: Tensor, lengths: Tensor, speakers: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy (mean over the valid frames of utterances whose speaker is known, `speakers` >= 0;
        zero where there are none) and the share of those frames whose speaker it guessed."""
        logits = self.classifier(ReverseGradient.apply(hidden, self.scale))
        frames = valid_mask(lengths.to(hidden.device), hidden.size(1))
        labels = speakers[:, None].expand(-1, hidden.size(1)).masked_fill(~frames, -1)
        known = (labels >= 0).sum().clamp(min=1)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-1, reduction="sum") / known
        right = ((logits.argmax(-1) == labels) & (labels >= 0)).sum() / known
        return loss, right


class SpeechModel(nn.Module):
    """Feature frames (B, T, features: log-mels or cepstra) -> per-output-frame log-probabilities over blank + tokens.

    The front-end is a convolution whose kernel equals its stride (`subsample`
    frames in, one out), so it never looks across a group of frames: fed group by
    group it gives the same outputs, which lets a unidirectional model stream. With
    `spectral` settings it is a `SpectralFrontend` instead. With `lookahead` > 0
    each output also sees that many later encoder frames. With `speakers` > 0 it holds a
    `SpeakerAdversary` over the encoder outputs, which trains with it while `adversary_scale` > 0.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        features: int,
        classes: int,
        subsample: int = 2,
        frontend_size: int = 128,
        dropout: float = 0.1,
        lookahead: int = 0,
        spectral: Spectral | None = None,
        speakers: int = 0,
        adversary_scale: float = 0.0,
    ) -> None:
        super().__init__()
        if subsample < 1:
            raise ValueError(f"subsample must be at least 1, got {subsample}")
        self.subsample = subsample
        self.frontend = (SpectralFrontend(features, frontend_size, subsample, spectral) if spectral is not None
                         else nn.Conv1d(features, frontend_size, kernel_size=subsample, stride=subsample))
        self.backbone = backbone(input_size=frontend_size)
        self.lookahead = Lookahead(self.backbone.output_size, lookahead)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.output_size, classes)
        self.adversary = SpeakerAdversary(self.backbone.output_size, speakers, adversary_scale) if speakers else None

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames for `lengths` input frames (a partial last group is dropped)."""
        return lengths // self.subsample

    def encode(
        self, frames: Tensor, lengths: Tensor | None = None, h0: State | None = None
    ) -> tuple[Tensor, Tensor | None, State]:
        """Encoder outputs (B, T // subsample, H) (zeros past each length), their lengths and the final state."""
        x = F.gelu(self.frontend(frames.transpose(1, 2))).transpose(1, 2)
        out_lengths = None if lengths is None else self.output_lengths(lengths)
        out, h = self.backbone(x, out_lengths, h0)
        return out, out_lengths, h

    def emit(self, hidden: Tensor, complete: bool = True) -> Tensor:
        """Log-probabilities of encoder outputs; `complete=False` drops the last `lookahead` frames, which
        wait for later audio (see `Lookahead`)."""
        return self.head(self.dropout(self.lookahead(hidden, complete))).log_softmax(-1)

    def forward(
        self, frames: Tensor, lengths: Tensor | None = None, h0: State | None = None
    ) -> tuple[Tensor, Tensor | None, State]:
        """Log-probabilities (B, T // subsample, classes), their lengths, and the encoder's final state.

        Without `lengths` every sequence is taken as complete.
        """
        hidden, out_lengths, h = self.encode(frames, lengths, h0)
        return self.emit(hidden), out_lengths, h
