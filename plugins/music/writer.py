"""Music artifacts: playable MIDI files and piano-roll pictures, written atomically."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pretty_midi
from matplotlib.figure import Figure

from gru_suite.atomic import atomic_path, save_figure
from gru_suite_plugins.music.data import Signature, midi_to_roll

SUSTAIN_PEDAL = 64


TICKS_PER_STEP = 240
"""Ticks per step of a written roll: its steps on whole ticks whatever its steps per beat (pretty_midi's 220 a beat
split 3, 8 or 16 ways did not)."""


def roll_to_midi(
    roll: np.ndarray, low: int, steps_per_beat: int, tempo: float, program: int = 0, velocity: int = 80
) -> pretty_midi.PrettyMIDI:
    """One instrument playing `roll` (steps, P) with pitch `low + p`; held steps join into one note.

    A sustain-off event at the end makes the file last exactly `steps` steps.
    """
    step = 60.0 / tempo / steps_per_beat
    pm = pretty_midi.PrettyMIDI(resolution=TICKS_PER_STEP * steps_per_beat, initial_tempo=tempo)
    instrument = pretty_midi.Instrument(program=program, name=pretty_midi.program_to_instrument_name(program))
    padded = np.pad(roll.astype(np.int8), ((1, 1), (0, 0)))
    for p in range(roll.shape[1]):
        edges = np.flatnonzero(np.diff(padded[:, p]))
        for on, off in zip(edges[::2], edges[1::2]):
            instrument.notes.append(pretty_midi.Note(velocity, low + p, on * step, off * step))
    instrument.notes.sort(key=lambda n: (n.start, n.pitch))
    instrument.control_changes.append(pretty_midi.ControlChange(SUSTAIN_PEDAL, 0, len(roll) * step))
    pm.instruments.append(instrument)
    return pm


def add_signatures(pm: pretty_midi.PrettyMIDI, signatures: Sequence[Signature],
                   seconds_per_quarter: float | None = None) -> pretty_midi.PrettyMIDI:
    """`pm` with `signatures` (a primer's time and key signatures): each at its quarter note at `seconds_per_quarter`
    (a piece on the primer's beat grid at another tempo), or at its own second (None: a performance, in real time)."""
    for signature in signatures:
        mark = copy.copy(signature.mark)
        mark.time = signature.second if seconds_per_quarter is None else signature.quarter * seconds_per_quarter
        marks = pm.time_signature_changes if isinstance(mark, pretty_midi.TimeSignature) else pm.key_signature_changes
        marks.append(mark)
    return pm


def write_midi(pm: pretty_midi.PrettyMIDI, path: Path) -> Path:
    with atomic_path(path) as tmp:
        pm.write(str(tmp))
    return path


def plot_roll(roll: np.ndarray, low: int, steps_per_beat: int, title: str) -> Figure:
    """The roll as a picture: time in beats across, MIDI pitch up."""
    steps, pitches = roll.shape
    fig = Figure(figsize=(min(4 + steps / (4 * steps_per_beat), 16), 4), layout="constrained")
    ax = fig.subplots()
    extent = (0, steps / steps_per_beat, low - 0.5, low + pitches - 0.5)
    ax.imshow(roll.T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest", extent=extent)
    ax.set_xlabel("beat")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    return fig


def write_piece(
    roll: np.ndarray, stem: Path, low: int, steps_per_beat: int, tempo: float, program: int, velocity: int,
    signatures: Sequence[Signature] = (),
) -> list[Path]:
    """Write `<stem>.mid` (with a primer's time and key signatures, on its beats) and `<stem>.png`."""
    pm = add_signatures(roll_to_midi(roll, low, steps_per_beat, tempo, program, velocity), signatures, 60.0 / tempo)
    midi = write_midi(pm, stem.with_suffix(".mid"))
    png = save_figure(plot_roll(roll, low, steps_per_beat, stem.name), stem.with_suffix(".png"), dpi=100)
    return [midi, png]


def write_performance(pm: pretty_midi.PrettyMIDI, stem: Path, steps_per_beat: int) -> list[Path]:
    """Write `<stem>.mid` and `<stem>.png`, the piano roll of `pm` on its beat grid over the pitches it plays."""
    midi = write_midi(pm, stem.with_suffix(".mid"))
    roll = midi_to_roll(pm, steps_per_beat)
    used = np.flatnonzero(roll.any(0))
    low, high = (int(used[0]), int(used[-1])) if len(used) else (60, 60)
    roll = roll[:, low:high + 1] if len(roll) else np.zeros((1, 1), dtype=bool)
    png = save_figure(plot_roll(roll, low, steps_per_beat, stem.name), stem.with_suffix(".png"), dpi=100)
    return [midi, png]
