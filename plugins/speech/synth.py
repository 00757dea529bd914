"""A deterministic bundled corpus: ten synthetic spoken digits, alone and as connected strings, 8 kHz WAV.

Each digit word is a fixed sequence of phone-like segments: voiced vowels and glides
(harmonics of a pitch shaped by two formants), nasals, fricatives (band-passed noise)
and stop bursts. Every utterance draws its own speaker (pitch, formant scale), speed,
level and background noise, so the recogniser has to generalise, not memorise.
"""

from __future__ import annotations

import io
import json

import numpy as np
import soundfile as sf

from gru_suite_plugins.speech.sources import DIGIT_WORDS

SAMPLE_RATE = 8000
# phone -> (kind, first value, second value): vowel/glide/nasal (F1, F2 in Hz), fricative (centre Hz, voiced 0/1), stop
PHONES = {
    "i": ("vowel", 300, 2300), "e": ("vowel", 520, 1850), "a": ("vowel", 750, 1250), "o": ("vowel", 500, 900),
    "u": ("vowel", 320, 850), "r": ("glide", 420, 1300), "w": ("glide", 320, 700), "n": ("nasal", 260, 1500),
    "z": ("fricative", 3800, 1), "s": ("fricative", 3600, 0), "f": ("fricative", 2600, 0), "v": ("fricative", 2400, 1),
    "th": ("fricative", 3000, 0), "t": ("stop", 3200, 0), "k": ("stop", 1800, 0),
}
DURATIONS = {"vowel": 0.11, "glide": 0.06, "nasal": 0.07, "fricative": 0.09, "stop": 0.03}
WORD_PHONES = {
    "zero": "z i r o", "one": "w a n", "two": "t u", "three": "th r i", "four": "f o r",
    "five": "f a i v", "six": "s i k s", "seven": "s e v e n", "eight": "e i t", "nine": "n a i n",
}
SPLITS = {"train": (60, 18), "val": (10, 5), "test": (10, 5)}
"""Isolated words and connected strings (2-4 words) per split."""


def _envelope(n: int, fade: int) -> np.ndarray:
    env = np.ones(n)
    fade = min(fade, n // 2)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
    env[:fade], env[n - fade:] = ramp, ramp[::-1]
    return env


def _voiced(n: int, f0: float, f1: float, f2: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    pitch = f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    out = np.zeros(n)
    for h in range(1, int(SAMPLE_RATE / 2 / f0)):
        f = h * f0
        gain = np.exp(-(((f - f1) / 110) ** 2)) + 0.6 * np.exp(-(((f - f2) / 160) ** 2)) + 0.02
        out += gain * np.sin(h * phase)
    return out


def _noise(n: int, centre: float, width: float, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= np.exp(-(((freqs - centre) / width) ** 2))
    out = np.fft.irfft(spectrum, n)
    return out / (np.abs(out).max() + 1e-9)


def _phone(name: str, speed: float, f0: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    kind, a, b = PHONES[name]
    n = int(DURATIONS[kind] * speed * rng.uniform(0.85, 1.15) * SAMPLE_RATE)
    if kind in ("vowel", "glide"):
        sound = _voiced(n, f0, a * scale, b * scale, rng)
    elif kind == "nasal":
        sound = 0.5 * _voiced(n, f0, a * scale, b * scale, rng)
    elif kind == "fricative":
        sound = 1.2 * _noise(n, a * scale, 600, rng) + (0.4 * _voiced(n, f0, 250, 1500, rng) if b else 0)
    else:  # a stop: a short closure, then a burst
        sound = np.concatenate([np.zeros(n), 1.5 * _noise(n, a * scale, 1500, rng)])
    return sound * _envelope(len(sound), int(0.012 * SAMPLE_RATE))


def speak(words: list[str], seed: int) -> np.ndarray:
    """One speaker saying `words` (pauses between them), with noise, at a random level; float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    f0, scale, speed = rng.uniform(95, 230), rng.uniform(0.9, 1.12), rng.uniform(0.8, 1.15)
    pieces = [np.zeros(int(rng.uniform(0.03, 0.12) * SAMPLE_RATE))]
    for word in words:
        voice = np.concatenate([_phone(p, speed, f0, scale, rng) for p in WORD_PHONES[word].split()])
        pieces += [voice / np.abs(voice).max() * 10 ** (rng.uniform(-6, 0) / 20),
                   np.zeros(int(rng.uniform(0.05, 0.25) * SAMPLE_RATE))]
    signal = np.concatenate(pieces)
    signal = 0.5 * signal + rng.normal(0, 10 ** (rng.uniform(-50, -38) / 20), len(signal))
    return (signal * 10 ** (rng.uniform(-10, 0) / 20)).clip(-1, 1).astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def corpus_files() -> dict[str, bytes | str]:
    """`{split}_{NNN}.wav` files and `{split}.jsonl` manifests (NeMo layout); same bytes every run."""
    files: dict[str, bytes | str] = {}
    seed = 0
    for number, (split, (isolated, connected)) in enumerate(SPLITS.items()):
        rng = np.random.default_rng(number)
        lines = []
        for i in range(isolated + connected):
            if i < isolated:
                words = [DIGIT_WORDS[i % 10]]
            else:
                words = [DIGIT_WORDS[d] for d in rng.integers(0, 10, int(rng.integers(2, 5)))]
            seed += 1
            samples = speak(words, seed=seed)
            name = f"{split}_{i:03d}.wav"
            files[name] = wav_bytes(samples)
            lines.append(json.dumps({"audio_filepath": name, "duration": round(len(samples) / SAMPLE_RATE, 4),
                                     "text": " ".join(words)}))
        files[f"{split}.jsonl"] = "\n".join(lines) + "\n"
    return files
