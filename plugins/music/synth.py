"""A deterministic bundled corpus: four-voice chorale-like pieces with simple functional harmony."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pretty_midi

from gru_suite.atomic import atomic_path

MAJOR = (0, 2, 4, 5, 7, 9, 11)
# scale degree of each chord root (0 = I) and the chords that may follow it
PROGRESSIONS = {0: (3, 4, 5, 1), 1: (4,), 3: (4, 0, 1), 4: (0, 5), 5: (3, 1)}
RANGES = ((40, 60), (48, 67), (55, 74), (60, 79))  # bass, tenor, alto, soprano
KEYS = (60, 67, 65, 62, 70, 69)  # C, G, F, D, Bb, A major
BEATS_PER_PHRASE = 8


def _chord_pcs(key: int, degree: int) -> tuple[int, int, int]:
    """Pitch classes of the diatonic triad on `degree` of the major `key`."""
    return tuple((key + MAJOR[(degree + step) % 7]) % 12 for step in (0, 2, 4))  # type: ignore[return-value]


def _voice(pcs: tuple[int, int, int], previous: tuple[int, ...] | None) -> tuple[int, ...]:
    """Bass on the root; upper voices complete the triad, spaced within an octave, moving least."""
    options = [[p for p in range(lo, hi + 1) if p % 12 in pcs] for lo, hi in RANGES]
    best, best_cost = None, float("inf")
    for voicing in itertools.product(*options):
        b, t, a, s = voicing
        if b % 12 != pcs[0] or not (b < t < a < s) or a - t > 12 or s - a > 12:
            continue
        if {p % 12 for p in voicing} != set(pcs):
            continue
        centre = sum(abs(p - (lo + hi) / 2) for p, (lo, hi) in zip(voicing, RANGES))
        cost = sum(abs(p - q) for p, q in zip(voicing, previous)) if previous else centre
        if cost < best_cost:
            best, best_cost = voicing, cost
    assert best is not None
    return best


def _progression(rng: np.random.Generator, beats: int) -> list[int]:
    """Chord roots by beat: phrases wander by the rules, then cadence V-I (a half note on I)."""
    degrees: list[int] = []
    while len(degrees) < beats:
        phrase = [0]
        while len(phrase) < BEATS_PER_PHRASE - 3:
            phrase.append(int(rng.choice(PROGRESSIONS[phrase[-1]])))
        degrees += [*phrase, 4, 0, 0]
    return degrees[:beats]


def chorale(seed: int, key: int, beats: int = 48, tempo: float = 96.0) -> pretty_midi.PrettyMIDI:
    """One piece: a chord per beat, cadences held two beats, soprano passing tones in eighths (the scale's step
    between two chord tones a third apart)."""
    rng = np.random.default_rng(seed)
    beat = 60.0 / tempo
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    piano = pretty_midi.Instrument(program=0, name="choir")
    chords, previous = [], None
    for degree in _progression(rng, beats):
        previous = _voice(_chord_pcs(key, degree), previous)
        chords.append(previous)
    runs = _runs(chords)
    for n, (i, length) in enumerate(runs):
        chord = chords[i]
        start, end = i * beat, (i + length) * beat
        following = chords[runs[n + 1][0]] if n + 1 < len(runs) else chord
        for voice, (pitch, nxt) in enumerate(zip(chord, following)):
            if voice == 3 and length == 1 and abs(nxt - pitch) in (3, 4) and rng.random() < 0.6:
                passing = next(p for p in range(min(pitch, nxt) + 1, max(pitch, nxt)) if (p - key) % 12 in MAJOR)
                piano.notes.append(pretty_midi.Note(84, pitch, start, start + beat / 2))
                piano.notes.append(pretty_midi.Note(72, passing, start + beat / 2, end))
            else:
                piano.notes.append(pretty_midi.Note(84 if voice == 3 else 72, pitch, start, end))
    pm.instruments.append(piano)
    return pm


def _runs(chords: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    """(first beat, length in beats) of each run of repeated chords."""
    runs, start = [], 0
    for i in range(1, len(chords) + 1):
        if i == len(chords) or chords[i] != chords[start]:
            runs.append((start, i - start))
            start = i
    return runs


def corpus_files(pieces: int = 48) -> dict[str, bytes]:
    """`chorale_NN.mid` -> its bytes, for `pieces` chorales in keys cycling through KEYS; same bytes every run."""
    files = {}
    for i in range(pieces):
        buffer = io.BytesIO()
        chorale(seed=1000 + i, key=KEYS[i % len(KEYS)]).write(buffer)
        files[f"chorale_{i:02d}.mid"] = buffer.getvalue()
    return files


def write_corpus(folder: Path, pieces: int = 48) -> list[Path]:
    """Write the corpus of `corpus_files` into `folder`, each file atomically."""
    paths = []
    for name, content in corpus_files(pieces).items():
        with atomic_path(Path(folder) / name) as tmp:
            tmp.write_bytes(content)
        paths.append(Path(folder) / name)
    return paths
