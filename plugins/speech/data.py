"""Batches of features for training and transcription, and the task's DataModule."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from gru_suite.data import SplitDataModule
from gru_suite.text import pad_ids
from gru_suite_plugins.speech.audio import FeatureConfig, LogMel, RunningSum, cepstral, normalize, normalize_online
from gru_suite_plugins.speech.endpoint import DB, Endpointer
from gru_suite_plugins.speech.sources import Skipped, Utterance


class Featurizer:
    """Samples -> log-mel frames -> (with an `endpointer`, from just before the speech onset) -> (with
    `config.cepstra`, their cepstral coefficients) -> standardised frames: by the global `mean`/`std`; with
    `online_prior` frames, by a running mean of the utterance so far that starts from `mean`
    (`normalize_online`); or, without `mean`/`std`, by the utterance's own statistics (offline only)."""

    def __init__(self, config: FeatureConfig, mean: Tensor | None = None, std: Tensor | None = None,
                 online_prior: int | None = None, endpointer: Endpointer | None = None) -> None:
        self.config = config
        self.log_mel = LogMel(config)
        self.mean = mean
        self.std = std
        self.online_prior = online_prior
        self.endpointer = endpointer
        self.dct = cepstral(config)

    @property
    def streamable(self) -> bool:
        """Whether frames can be normalised without the rest of the utterance."""
        return self.mean is not None and self.std is not None

    def raw(self, samples: Tensor) -> Tensor:
        return self.log_mel(samples)

    def speech(self, samples: Tensor) -> tuple[Tensor, int]:
        """An utterance's log-mel frames from just before its speech onset, and how many frames were skipped."""
        raw = self.raw(samples)
        return self.endpointer.trim(raw) if self.endpointer else (raw, 0)

    def model_features(self, raw: Tensor) -> Tensor:
        """Raw log-mel frames as the model sees them before normalisation: themselves, or their cepstra."""
        return raw if self.dct is None else raw @ self.dct

    def normalize(self, raw: Tensor) -> Tensor:
        """A whole utterance's raw frames, normalised."""
        return self.normalize_chunk(raw, None)[0]

    def normalize_chunk(self, raw: Tensor, carry: RunningSum | None) -> tuple[Tensor, RunningSum | None]:
        """The next raw frames of a stream, normalised, and the running sum to carry to the next chunk."""
        features = self.model_features(raw)
        if self.online_prior is None:
            return normalize(features, self.mean, self.std), None
        return normalize_online(features, self.mean, self.std, self.online_prior, carry)

    def __call__(self, samples: Tensor) -> Tensor:
        return self.normalize(self.speech(samples)[0])


COLOUR_POINTS = 6
"""Mel bins at which `Augment.colour` draws its gains, unless configured."""


class Augment:
    """Training augmentation: at a `silence_fraction` of draws, a random stretch of the utterance's room
    tone before it (`lead`); a random level change within +-`gain_db`, a random spectral tilt within
    +-`tilt_db` from the lowest to the highest mel bin (`tilt`), a random colour of gains within +-`colour_db`
    at `colour_points` bins across the band (`colour`: a microphone's and a room's), a random vocal tract length
    warp of the spectrum by a factor within 1 +- `warp` (VTLP, Jaitly & Hinton 2013), then SpecAugment
    masks (`freq_masks` bands of up to `freq_width` feature bins, mel bins or cepstra, `time_masks` spans of up
    to `time_width` frames). `features` places the mel bins for the warp."""

    def __init__(self, gain_db: float = 0.0, freq_masks: int = 0, freq_width: int = 0, time_masks: int = 0,
                 time_width: int = 0, warp: float = 0.0, features: FeatureConfig | None = None,
                 silence_fraction: float = 0.0, tilt_db: float = 0.0, colour_db: float = 0.0,
                 colour_points: int = COLOUR_POINTS) -> None:
        self.silence_fraction = silence_fraction
        self.tilt_db = tilt_db
        self.colour_db = colour_db
        self.colour_points = colour_points
        self.gain_db = gain_db
        self.freq_masks = freq_masks if freq_width else 0
        self.time_masks = time_masks if time_width else 0
        self.warp = warp
        self._freq = torchaudio.transforms.FrequencyMasking(freq_width)
        self._time = torchaudio.transforms.TimeMasking(time_width)
        features = features or FeatureConfig()
        self._centres_hz = mel_centres_hz(features.sample_rate, features.n_mels, features.f_min_hz)

    def lead(self, raw: Tensor, tone: Tensor) -> Tensor:
        """Log-mel frames `raw` after the first k frames of `tone` (its room tone's frames), k uniform in
        0..len(tone), at a `silence_fraction` of draws; else `raw` itself."""
        if torch.rand(()) >= self.silence_fraction:
            return raw
        return torch.cat([tone[: int(torch.randint(len(tone) + 1, ()))], raw])

    def level(self, raw: Tensor) -> Tensor:
        """A gain of g dB adds g * ln(10) / 10 to every log-power bin."""
        if not self.gain_db:
            return raw
        db = (torch.rand(()) * 2 - 1) * self.gain_db
        return raw + db * DB

    def tilt(self, raw: Tensor, db: float | None = None) -> Tensor:
        """The spectrum tilted as a microphone or room colours it: the highest mel bin `db` louder than the
        lowest (drawn within +-`tilt_db` when None), the gain in dB linear in the bin's index between them."""
        if db is None:
            if not self.tilt_db:
                return raw
            db = (torch.rand(()).item() * 2 - 1) * self.tilt_db
        return self.colour(raw, torch.tensor([-db / 2, db / 2]))

    def colour(self, raw: Tensor, gains_db: Tensor | None = None) -> Tensor:
        """The spectrum coloured as a microphone and room colour it: the gains `gains_db` (drawn within
        +-`colour_db` at `colour_points` bins when None) placed evenly from the lowest mel bin to the highest,
        in dB, linear between them."""
        if gains_db is None:
            if not self.colour_db:
                return raw
            gains_db = (torch.rand(self.colour_points) * 2 - 1) * self.colour_db
        curve = F.interpolate(gains_db.to(raw).view(1, 1, -1), size=raw.size(-1), mode="linear", align_corners=True)
        return raw + curve.view(-1) * DB

    def stretch(self, raw: Tensor, factor: float | None = None) -> Tensor:
        """Log-mel frames (T, n_mels) of the same voice with its spectrum stretched by `factor` (drawn
        within 1 +- `warp` when None): bin i takes the value at frequency f_i / factor, interpolated
        linearly between the two bins around it (and held beyond the first and last bin)."""
        if factor is None:
            if not self.warp:
                return raw
            factor = 1.0 + (torch.rand(()).item() * 2 - 1) * self.warp
        centres = self._centres_hz
        source = centres / factor
        below = (torch.searchsorted(centres, source) - 1).clamp(0, len(centres) - 2)
        weight = ((source - centres[below]) / (centres[below + 1] - centres[below])).clamp(0.0, 1.0)
        return raw[:, below] * (1 - weight) + raw[:, below + 1] * weight

    def mask(self, features: Tensor) -> Tensor:
        spec = features.T  # (n_mels, T), as torchaudio's masks expect
        for _ in range(self.freq_masks):
            spec = self._freq(spec)
        for _ in range(self.time_masks):
            spec = self._time(spec)
        return spec.T


def mel_centres_hz(sample_rate: int, n_mels: int, f_min_hz: float = 0.0) -> Tensor:
    """Centre frequency (Hz) of each triangular filter of torchaudio's (htk) mel filterbank."""
    def mel(hz: float) -> float:
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    mels = torch.linspace(mel(f_min_hz), mel(sample_rate / 2), n_mels + 2)[1:-1]
    return 700.0 * (10 ** (mels / 2595.0) - 1.0)


def pad_frames(features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Frames (T_i, F) right-padded with zeros into (B, T, F), and the lengths."""
    return pad_sequence(list(features), batch_first=True), torch.tensor([len(f) for f in features])


class TranscribedSet(Dataset):
    """Utterances with token targets, as batch dicts: `features` (B, T, F), `lengths`, `targets` (B, L),
    `target_lengths`, `texts`, `speakers` (B,) (each utterance's speaker index, -1 where unknown or not given),
    `any_speaker` (whether one is known: a Python bool, read without waiting for the device), `in_loss` (B,)
    (False for an utterance too short for its CTC tokens: scored, but no loss can be computed).
    Log-mels are computed once; `augment` applies per draw, with each utterance's room-tone frames `tones`
    (for `Augment.lead`) when given."""

    def __init__(self, raw: list[Tensor], targets: list[list[int]], texts: list[str], featurizer: Featurizer,
                 augment: Augment | None = None, tones: list[Tensor] | None = None,
                 speakers: list[int] | None = None, in_loss: list[bool] | None = None) -> None:
        self.raw = raw
        self.tones = tones
        self.speakers = torch.tensor(speakers if speakers is not None else [-1] * len(raw))
        self.in_loss = torch.tensor(in_loss if in_loss is not None else [True] * len(raw))
        self.targets = targets
        self.texts = texts
        self.featurizer = featurizer
        self.augment = augment

    def __len__(self) -> int:
        return len(self.raw)

    def _features(self, index: int) -> Tensor:
        if self.augment is None:
            return self.featurizer.normalize(self.raw[index])
        raw = self.raw[index] if self.tones is None else self.augment.lead(self.raw[index], self.tones[index])
        raw = self.augment.stretch(self.augment.colour(self.augment.tilt(self.augment.level(raw))))
        return self.augment.mask(self.featurizer.normalize(raw))

    def __getitems__(self, indices: Sequence[int]) -> dict:
        features, lengths = pad_frames([self._features(i) for i in indices])
        targets, target_lengths = pad_ids([self.targets[i] for i in indices])
        speakers = self.speakers[list(indices)]
        return {"features": features, "lengths": lengths, "targets": targets, "target_lengths": target_lengths,
                "texts": [self.texts[i] for i in indices], "index": list(indices), "speakers": speakers,
                "any_speaker": bool((speakers >= 0).any()), "in_loss": self.in_loss[list(indices)]}


class AudioSet(Dataset):
    """Utterances to transcribe, as batch dicts: `features` (from just before the speech onset), `lengths`,
    `skipped` (frames before them), `samples` (list of (N,)), `paths`, `durations` (s), `references`
    (transcripts, None where unknown), `offsets` (s, where each starts in its file) and `positions` (each
    utterance's place in `read`: inputs may share a path).
    `speech` holds each utterance's `Featurizer.speech` when already computed; `read`, every utterance read for
    it, those left out too (default: `utterances`); `left_out`, the inputs skipped, and why."""

    def __init__(self, utterances: list[Utterance], featurizer: Featurizer,
                 speech: list[tuple[Tensor, int]] | None = None, read: list[Utterance] | None = None,
                 left_out: list[Skipped] | None = None) -> None:
        self.utterances = utterances
        self.featurizer = featurizer
        self.speech = speech
        self.read = utterances if read is None else read
        self.left_out = left_out or []
        place = {id(u): i for i, u in enumerate(self.read)}
        self.positions = [place[id(u)] for u in utterances]  # plain numbers: a worker process gets copies

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitems__(self, indices: Sequence[int]) -> dict:
        items = [self.utterances[i] for i in indices]
        speech = ([self.speech[i] for i in indices] if self.speech is not None
                  else [self.featurizer.speech(u.samples) for u in items])
        features, lengths = pad_frames([self.featurizer.normalize(raw) for raw, _ in speech])
        return {"features": features, "lengths": lengths, "skipped": [skip for _, skip in speech],
                "samples": [u.samples for u in items],
                "paths": [str(u.path) for u in items], "durations": [u.seconds for u in items],
                "references": [u.text for u in items], "offsets": [u.offset for u in items],
                "positions": [self.positions[i] for i in indices]}


class SpeechData(SplitDataModule):
    """Datasets built on first use by `builders[stage]()`, so prediction reads no training data."""

    def __init__(self, builders: dict[str, Callable[[], Dataset]], batch_size: int, num_workers: int = 0,
                 batch_sizes: dict[str, int] | None = None) -> None:
        super().__init__(batch_size, num_workers, batch_sizes, build=lambda stage: builders[stage]())
