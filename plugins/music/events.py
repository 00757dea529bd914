"""The event representation of a performance (Performance RNN, Oore et al. 2018).

A performance is a sequence of events from a vocabulary of 388:

- NOTE_ON(p), 128 of them: pitch p starts sounding, at the current velocity;
- NOTE_OFF(p), 128: pitch p stops;
- TIME_SHIFT(n), 100: time moves on by n x 10 ms (10 ms .. 1 s; longer gaps take several);
- SET_VELOCITY(b), 32: the following notes have velocity bin b (velocities 4b+1 .. 4b+4).

Time is real time in seconds (the file's tempo map only decides where the seconds fall),
quantised to 10 ms. `encode` merges every non-drum instrument (drums too if asked);
`decode` plays the events on one instrument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pretty_midi

PITCHES = 128
SHIFT_BINS = 100
VELOCITY_BINS = 32
STEPS_PER_SECOND = 100
"""Time resolution: one TIME_SHIFT step is 10 ms."""
RESOLUTION = 1200
"""Ticks per beat of a written performance: 10 ms is a whole number of ticks at any tempo in steps of 5 bpm (18 at
90 bpm; at pretty_midi's 220, 3.3, so a note at 1.25 s was written at 1.248 s)."""

NOTE_ON = 0
NOTE_OFF = NOTE_ON + PITCHES
TIME_SHIFT = NOTE_OFF + PITCHES
SET_VELOCITY = TIME_SHIFT + SHIFT_BINS
VOCAB = SET_VELOCITY + VELOCITY_BINS
"""388 events; a model may add its own tokens (a start token) at VOCAB and above, which `decode` ignores."""

VELOCITY_BIN_SIZE = 4
DEFAULT_VELOCITY = 64
"""Velocity of notes before the first SET_VELOCITY."""
SUSTAIN_PEDAL = 64


def velocity_bin(velocity: int) -> int:
    """The bin (0..31) of a MIDI velocity (1..127)."""
    return (min(max(int(velocity), 1), 127) - 1) // VELOCITY_BIN_SIZE


def bin_velocity(index: int) -> int:
    """A velocity inside bin `index`."""
    return VELOCITY_BIN_SIZE * index + 2


def shift_steps(event: int) -> int:
    """10 ms steps a TIME_SHIFT event moves on (0 for any other event)."""
    return event - TIME_SHIFT + 1 if TIME_SHIFT <= event < SET_VELOCITY else 0


def time_shifts(steps: int) -> list[int]:
    """TIME_SHIFT events covering `steps` x 10 ms (full seconds first)."""
    events = []
    while steps > 0:
        events.append(TIME_SHIFT + min(steps, SHIFT_BINS) - 1)
        steps -= SHIFT_BINS
    return events


def duration(events: Sequence[int]) -> float:
    """Seconds the events last (the sum of their time shifts)."""
    return sum(map(shift_steps, events)) / STEPS_PER_SECOND


def encode(pm: pretty_midi.PrettyMIDI, drums: bool = False) -> list[int]:
    """The events of `pm`'s notes (all instruments merged; drum tracks only if `drums`).

    Onsets and offsets round to 10 ms; every note lasts at least 10 ms, and a note
    ends where the next note of the same pitch starts. At one instant, offsets come
    before onsets (by pitch). Silence up to the file's end time is kept.
    """
    by_pitch: dict[int, list[tuple[int, int, int]]] = {}
    for inst in pm.instruments:
        if inst.is_drum and not drums:
            continue
        for note in inst.notes:
            on = round(note.start * STEPS_PER_SECOND)
            off = max(round(note.end * STEPS_PER_SECOND), on + 1)
            by_pitch.setdefault(note.pitch, []).append((on, off, note.velocity))
    messages = []  # (step, 0 = off / 1 = on, pitch, velocity)
    for pitch, notes in by_pitch.items():
        notes.sort()
        for i, (on, off, velocity) in enumerate(notes):
            if i + 1 < len(notes):
                off = min(off, notes[i + 1][0])
            if off > on:
                messages += [(on, 1, pitch, velocity), (off, 0, pitch, 0)]
    messages.sort()
    events, now, velocity = [], 0, None
    for step, kind, pitch, vel in messages:
        events += time_shifts(step - now)
        now = step
        if kind == 0:
            events.append(NOTE_OFF + pitch)
            continue
        if velocity_bin(vel) != velocity:
            velocity = velocity_bin(vel)
            events.append(SET_VELOCITY + velocity)
        events.append(NOTE_ON + pitch)
    if messages:
        events += time_shifts(round(pm.get_end_time() * STEPS_PER_SECOND) - now)
    return events


def decode(
    events: Sequence[int], program: int = 0, tempo: float = 120.0, end: float | None = None,
    max_note_s: float | None = None,
) -> pretty_midi.PrettyMIDI:
    """One instrument (General MIDI `program`) playing `events`.

    A NOTE_ON of a sounding pitch restarts it; a NOTE_OFF of a silent pitch does
    nothing; notes still sounding at the end stop there (zero-length notes are
    dropped), and a note held longer than `max_note_s` seconds stops then (as
    Magenta's performance decoding cuts notes a model never released). The file
    lasts until the last time shift, or `end` seconds if later (a sustain-off
    control change marks it). `tempo` only sets the file's beat grid (`RESOLUTION`).
    """
    pm = pretty_midi.PrettyMIDI(resolution=RESOLUTION, initial_tempo=tempo)
    instrument = pretty_midi.Instrument(program=program, name=pretty_midi.program_to_instrument_name(program))
    now, velocity = 0, DEFAULT_VELOCITY
    sounding: dict[int, tuple[int, int]] = {}
    longest = math.inf if max_note_s is None else round(max_note_s * STEPS_PER_SECOND)

    def stop(pitch: int) -> None:
        start, vel = sounding.pop(pitch)
        stop_at = min(now, start + longest)
        if stop_at > start:
            instrument.notes.append(
                pretty_midi.Note(vel, pitch, start / STEPS_PER_SECOND, stop_at / STEPS_PER_SECOND))

    for event in map(int, events):
        if NOTE_ON <= event < NOTE_OFF:
            if event in sounding:
                stop(event)
            sounding[event] = (now, velocity)
        elif event < TIME_SHIFT:
            if event - NOTE_OFF in sounding:
                stop(event - NOTE_OFF)
        elif event < SET_VELOCITY:
            now += shift_steps(event)
            for pitch in [p for p, (start, _) in sounding.items() if now - start >= longest]:
                stop(pitch)
        elif event < VOCAB:
            velocity = bin_velocity(event - SET_VELOCITY)
    for pitch in list(sounding):
        stop(pitch)
    instrument.notes.sort(key=lambda n: (n.start, n.pitch))
    last = max(now / STEPS_PER_SECOND, end or 0.0)
    if last > 0:
        instrument.control_changes.append(pretty_midi.ControlChange(SUSTAIN_PEDAL, 0, last))
    pm.instruments.append(instrument)
    return pm


def transpose(events: Sequence[int] | np.ndarray, shift: int) -> np.ndarray:
    """`events` with every NOTE_ON/NOTE_OFF moved by `shift` semitones; notes leaving 0..127 are dropped."""
    events = np.asarray(events, dtype=np.int64)
    note = events < TIME_SHIFT
    pitch = events % PITCHES + shift
    keep = ~note | ((pitch >= 0) & (pitch < PITCHES))
    return np.where(note, events + shift, events)[keep]
