"""Audio in: reading files with soundfile (mono, resampled) and log-mel features with torchaudio."""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

from gru_suite.errors import UserError, not_a_file

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
SILENCE_PEAK = 1e-4
"""Audio whose absolute peak stays below this (about -80 dBFS) is silent."""
LOG_FLOOR = 1e-6
PIPE_SIZE = 0xFFFFFFFF
"""The chunk size a WAV writer leaves when it streams to a pipe and cannot seek back."""


LOWEST_RATE = 1000
"""The lowest sample rate read as audio (Hz), as `features.sample_rate` is at least this."""
HIGHEST_RATE = 768_000
"""The highest sample rate read as audio (Hz): the highest that audio interfaces record at."""
LARGEST_KERNEL = 10_000_000
"""The most entries of an exact resampling kernel (`resample`): two rates that share no large factor (96001 and 8000
Hz) would need one of gigabytes."""
LARGEST_PEAK = 1e6
"""The largest sample magnitude read: floating-point audio holds samples in [-1, 1], and far larger ones (a broken
writer's) would overflow the features of the whole batch."""


class SilentAudio(UserError):
    """Audio (a file, or a manifest's segment of one) read, that holds no sound: its `seconds` are known."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds

    def __reduce__(self) -> tuple:  # pickled whole (an error may cross processes)
        return type(self), (str(self), self.seconds), self.__dict__


def read_audio(path: str | Path, sample_rate: int, offset: float = 0.0, duration: float | None = None) -> Tensor:
    """The samples of `path` as float32 (N,), downmixed to mono and resampled to `sample_rate`; with `offset`
    and `duration` (s), only that stretch (to the end when `duration` is None).

    An unreadable, truncated, empty or silent file (or stretch) raises a `UserError` naming the file.
    """
    path = Path(path)
    try:
        found = path.is_file()
    except OSError as err:  # a name too long
        raise UserError(f"{path}: not a readable audio file ({err.strerror})") from err
    if not found:
        raise not_a_file(path, "audio file")
    try:
        with sf.SoundFile(path) as audio:  # one open for the samples and the header report
            rate = audio.samplerate
            if offset * rate >= audio.frames > 0:
                raise UserError(f"{path}: offset {offset:g} s is past the end of its {audio.frames / rate:.3f} s")
            audio.seek(round(offset * rate))
            frames = -1 if duration is None else round(min(duration * rate, audio.frames))
            data = audio.read(frames, dtype="float32", always_2d=True)
            shortfall = _missing_data_bytes(audio.extra_info)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise UserError(f"{path}: not a readable audio file ({err})") from err
    if shortfall:
        raise UserError(f"{path}: the file is truncated (its header announces {shortfall[0]} bytes of audio, "
                        f"it holds {shortfall[1]})")
    if data.size == 0:
        raise UserError(f"{path}: the audio is empty (no samples)")
    if not np.isfinite(data).all():
        raise UserError(f"{path}: the audio holds NaN or infinite samples")
    if (peak := float(np.abs(data).max())) > LARGEST_PEAK:
        raise UserError(f"{path}: the audio holds samples as large as {peak:.3g}, where floating-point audio holds "
                        "them in [-1, 1]")
    samples = torch.from_numpy(data.mean(axis=1))
    if float(samples.abs().max()) < SILENCE_PEAK:
        cancelled = float(np.abs(data).max(axis=0).mean()) >= SILENCE_PEAK  # in phase, they would be heard
        why = "its channels cancel out in the mono downmix" if cancelled else "the audio is silent"
        raise SilentAudio(f"{path}: {why} (peak below {SILENCE_PEAK:g})", len(samples) / rate)
    if not LOWEST_RATE <= rate <= HIGHEST_RATE:  # resampled, 1 s at 1 Hz would become hours of samples
        raise UserError(f"{path}: its sample rate is {rate} Hz; speech audio has {LOWEST_RATE} to {HIGHEST_RATE} Hz")
    return resample(samples, rate, sample_rate).contiguous()


def resample(samples: Tensor, rate: int, target: int) -> Tensor:
    """`samples` recorded at `rate` Hz, at `target` Hz (torchaudio's band-limited sinc interpolation); from a rate
    that shares no large factor with `target` (11127 Hz, a header's 96001 Hz), whose exact kernel would take up to
    gigabytes, as if recorded at the nearest multiple of 10 or 100 Hz whose kernel is small: a change of speed under
    1% from rates above 1000 Hz, warned of once."""
    if rate != target and _kernel_size(rate, target) > LARGEST_KERNEL:
        rate = _nearest_resampled_rate(rate, target)
    return samples if rate == target else torchaudio.functional.resample(samples, rate, target)


def _kernel_size(rate: int, target: int) -> int:
    common = math.gcd(rate, target)
    return (rate // common) * (target // common)


@functools.cache
def _nearest_resampled_rate(rate: int, target: int) -> int:
    nearest = next((near for step in (10, 100) if _kernel_size(near := round(rate / step) * step, target)
                    <= LARGEST_KERNEL), None)
    if nearest is None:
        raise UserError(f"audio at {rate} Hz cannot be resampled to {target} Hz in reasonable memory (the two share no "
                        "large factor): set task.features.sample_rate to a multiple of 100 Hz")
    log.warning("audio at %d Hz is resampled to %d Hz as if recorded at %d Hz (%.2g%% %s): the two rates share no "
                "large factor, which exact resampling needs", rate, target, nearest, 100 * abs(nearest - rate) / rate,
                "slower" if nearest < rate else "faster")
    return nearest


def _missing_data_bytes(extra_info: str) -> tuple[int, int] | None:
    """(announced, present) bytes of a WAV/AIFF audio chunk cut short, from libsndfile's header report
    (`data : 16000 (should be 5304)`, `SSND : ...` for AIFF); None when the chunk is whole, or when its size
    is the placeholder a writer to a pipe leaves (0 or 0xFFFFFFFF: the size was never known)."""
    found = re.search(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info, re.MULTILINE)
    if found and int(found[1]) > int(found[2]) and int(found[1]) not in (0, PIPE_SIZE, PIPE_SIZE - 8):
        return int(found[1]), int(found[2])
    return None


def change_speed(samples: Tensor, factor: float, sample_rate: int) -> Tensor:
    """`samples` played `factor` times as fast, tempo and pitch together (sox's `speed`, as in Kaldi's speed
    perturbation): resampled as if they had been recorded at `factor` x `sample_rate`."""
    if factor <= 0:
        raise UserError(f"a speed factor must be positive, got {factor}")
    return resample(samples, round(sample_rate * factor), sample_rate)


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel filterbank settings; frames are `hop_ms` apart and never padded across the edges. With
    `cepstra`, the model sees that many cepstral coefficients of each frame (MFCCs) instead of its log-mels.
    The mel filters span `f_min_hz` to half the sample rate."""

    sample_rate: int = 8000
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    cepstra: int | None = None
    f_min_hz: float = 0.0

    @property
    def size(self) -> int:
        """Features per frame the model sees."""
        return self.cepstra or self.n_mels

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.win_ms / 1000)

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def n_fft(self) -> int:
        """FFT size: the window length rounded up to a power of two; a frame spans this many samples."""
        return 1 << (self.win_length - 1).bit_length()

    def frames(self, samples: int) -> int:
        """Whole frames in `samples` samples (a partial last frame is dropped)."""
        return 0 if samples < self.n_fft else 1 + (samples - self.n_fft) // self.hop_length


class LogMel:
    """Waveform (N,) -> log-mel frames (T, n_mels), frame t from samples [t*hop, t*hop + n_fft).

    `center=False`, so a frame depends only on its own samples: features computed
    chunk by chunk equal those of the whole signal (streaming needs this).
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate, n_fft=config.n_fft, win_length=config.win_length,
            hop_length=config.hop_length, n_mels=config.n_mels, f_min=config.f_min_hz, center=False, power=2.0,
        )

    def __call__(self, samples: Tensor) -> Tensor:
        if self.config.frames(len(samples)) == 0:
            return torch.zeros(0, self.config.n_mels)
        with torch.no_grad():
            return torch.log(self.mel(samples) + LOG_FLOOR).T.contiguous()


def cepstral(config: FeatureConfig) -> Tensor | None:
    """The (n_mels, cepstra) DCT-II (orthonormal) that turns log-mel frames into their first `cepstra`
    cepstral coefficients, as an MFCC does; None without `cepstra`."""
    return torchaudio.functional.create_dct(config.cepstra, config.n_mels, "ortho") if config.cepstra else None


RunningSum = tuple[Tensor, Tensor]
"""Per-bin sum of the frames seen so far (n_mels,) and how many frames it counts (1,)."""


def normalize(features: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """Per-mel-bin standardisation: with the given (global, training-set) `mean`/`std`, frame by frame
    (streamable); with `None`, over this utterance's own frames (needs the whole utterance)."""
    if mean is None or std is None:
        mean, std = features.mean(0), features.std(0, unbiased=False)
    return (features - mean) / (std + 1e-5)


def normalize_online(features: Tensor, mean: Tensor, std: Tensor, prior_frames: int,
                     carry: RunningSum | None = None) -> tuple[Tensor, RunningSum]:
    """Online mean normalisation (Kaldi's apply-cmvn-online): frame t minus the running per-bin mean of
    frames 0..t, that mean starting from `mean` as if it had been seen for `prior_frames` frames, over the
    global `std`. Fed chunk by chunk with the returned `carry` it gives the same frames as the whole."""
    total, count = carry if carry is not None else (mean * prior_frames, torch.tensor([float(prior_frames)]))
    sums = total + features.cumsum(0)
    counts = count + torch.arange(1, len(features) + 1, dtype=features.dtype)[:, None]
    out = (features - sums / counts) / (std + 1e-5)
    return out, ((sums[-1], counts[-1]) if len(features) else (total, count))
