"""Speech onset: the non-speech that opens an utterance, found causally so offline and streaming agree."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from gru_suite_plugins.speech.audio import FeatureConfig, LogMel

DB = math.log(10) / 10
"""Natural-log power units per decibel."""


def full_scale_energy(config: FeatureConfig) -> float:
    """Log mel power of one frame of a full-scale 1 kHz sine: the 0 dBFS reference of `Endpointer.level_dbfs`."""
    t = torch.arange(config.n_fft) / config.sample_rate
    return float(torch.logsumexp(LogMel(config)(torch.sin(2 * math.pi * 1000 * t)), 1)[0])


@dataclass(frozen=True)
class Endpointer:
    """Finds where speech starts in raw log-mel frames (T, n_mels), looking only at frames up to each one.

    Speech starts at the first frame whose energy (log of the summed mel power) is
    `margin_db` above the quietest frame so far, or above `level_dbfs` (relative to
    a full-scale sine). `preroll` frames before that are kept; the frames skipped
    are rounded down to a multiple of `multiple` (the model's subsampling), so its
    output frames keep their place in time.
    """

    config: FeatureConfig
    margin_db: float = 6.0
    level_dbfs: float = -30.0
    preroll: int = 10
    multiple: int = 1

    @cached_property
    def level(self) -> float:
        """`level_dbfs` as a frame energy."""
        return full_scale_energy(self.config) + self.level_dbfs * DB

    def onset(self, raw: Tensor, quietest: float = math.inf) -> tuple[int | None, float]:
        """The index of the first speech frame of `raw` (None if none) after earlier frames whose quietest
        energy was `quietest`, and the quietest energy up to the end of `raw`, to carry to the next frames."""
        if not len(raw):
            return None, quietest
        energy = torch.logsumexp(raw, 1)
        floor = torch.cummin(energy, 0).values.clamp(max=quietest)
        hits = ((energy >= floor + self.margin_db * DB) | (energy >= self.level)).nonzero()
        return (int(hits[0]) if len(hits) else None), float(floor[-1])

    def skipped(self, onset: int | None) -> int:
        """Frames to skip before speech that starts at frame `onset` (none when no speech was found)."""
        if onset is None:
            return 0
        return max(0, onset - self.preroll) // self.multiple * self.multiple

    def trim(self, raw: Tensor) -> tuple[Tensor, int]:
        """A whole utterance's frames from `preroll` before its speech onset, and how many were skipped."""
        skip = self.skipped(self.onset(raw)[0])
        return raw[skip:], skip
