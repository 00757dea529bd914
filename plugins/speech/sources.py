"""Where utterances come from: NeMo-style JSONL manifests, folders of audio with transcripts, the FSDD layout.

Bad input follows one rule. A manifest that is not UTF-8 JSON lines, or a line
without a string `audio_filepath` (or `text`, when transcripts are needed) or with
a non-numeric `duration`, is the user's file to fix: a `UserError` names the file
and line. An audio file that is missing, unreadable, empty, silent or shorter than
its manifest `duration` (truncated) is skipped with a warning naming the manifest
line (or the file); a source left with no usable audio is a `UserError`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gru_suite.errors import UserError, excerpt
from gru_suite.files import files_below
from gru_suite.text import read_lines
from gru_suite_plugins.speech.audio import AUDIO_SUFFIXES, read_audio

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_NAME = re.compile(r"^(\d)_(.+)_(\d+)$")  # a speaker may hold digits and underscores
PAUSE_NOISE = 1e-4
"""Standard deviation of the faint noise filling the pauses of connected utterances."""


@dataclass
class Utterance:
    """Audio at the task's sample rate, its transcript (None when unknown) and where it came from."""

    samples: Tensor
    sample_rate: int
    text: str | None
    path: Path
    where: str
    """`manifest:line` or the audio path, for messages."""
    speaker: str | None = None
    take: int | None = None
    offset: float | None = None
    """Where the samples start in the file (s): a manifest's segment of a longer recording (None: the whole file)."""

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def _read_or_skip(path: Path, sample_rate: int, where: str, offset: float = 0.0, duration: float | None = None,
                  skipped: list[Skipped] | None = None, position: int = 0) -> Tensor | None:
    """The audio at `path`, or None with a warning (and an entry in `skipped`, at `position`, where given) if it
    cannot be read."""
    try:
        return read_audio(path, sample_rate, offset, duration)
    except UserError as err:  # its message names the file: `where` too where it is another place (a manifest line)
        reason = str(err) if str(err).startswith(f"{where}:") else f"{where}: {err}"
        log.warning("skipping %s", reason)
        if skipped is not None:
            skipped.append(Skipped(path, reason, offset or None, position, duration=getattr(err, "seconds", None)))
        return None


def _field(record: dict, key: str, kind: type | tuple[type, ...], where: str) -> object:
    if key not in record:
        raise UserError(f"{where}: missing field {key!r} (a manifest line needs audio_filepath, and text "
                        "for training and testing; duration is optional)")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{where}: field {key!r} must be a {getattr(kind, '__name__', 'number')}, got {excerpt(value)}")
    return value


def _seconds(record: dict, key: str, where: str, expected: str, allowed: Callable[[float], bool]) -> float | None:
    """Optional field `key` of a manifest line: a finite number of seconds that is `allowed`, or None."""
    value = record.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not allowed(value) or not _finite(value)):
        raise UserError(f"{where}: field {key!r} must be {expected}, got {excerpt(value)}")
    return value


def _finite(number: float) -> bool:
    """Whether `number` is finite as a float (an integer of 400 digits is not)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


@dataclass
class Skipped:
    """An input left out (with a warning), and why: prediction still writes a line for it."""

    path: Path
    reason: str
    offset: float | None = None
    position: int = 0
    """Its place among the utterances read: before the one at this index, or (`read`) that one itself."""
    read: bool = False
    """Read, then skipped (too short to transcribe): another model of an ensemble may transcribe it."""
    duration: float | None = None
    """Its seconds, where they are known (audio read, then found silent, truncated or too short)."""


def read_manifest(path: str | Path, sample_rate: int, need_text: bool = True,
                  skipped: list[Skipped] | None = None) -> list[Utterance]:
    """Utterances of a JSONL manifest: `audio_filepath` (relative to the manifest), `duration` (s), `text`, and
    optionally `speaker` (a string or integer naming the voice) and `offset` (s): with it, the utterance is the
    `duration` seconds of the file from `offset` on (a segment of a longer recording, as NeMo reads it); without
    it, the whole file (with a warning where it runs well past `duration`). Audio left out is added to
    `skipped`, where given."""
    path = Path(path)
    utterances, lines = [], read_lines(path)
    if not any(line.strip() for line in lines):
        raise UserError(f"{path}: the manifest is empty (expected one JSON object per line)")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as err:  # arrays nested a thousand deep, too
            raise UserError(f"{where}: not a JSON object ({err})") from err
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
        audio = path.parent / str(_field(record, "audio_filepath", str, where))
        if "\0" in str(audio):
            raise UserError(f"{where}: field 'audio_filepath' holds a NUL character, which no file name has")
        text = _field(record, "text", str, where) if need_text or record.get("text") is not None else None
        duration = _seconds(record, "duration", where, "a positive number of seconds", lambda s: s > 0)
        offset = _seconds(record, "offset", where, "a number of seconds from 0 on", lambda s: s >= 0)
        speaker = record.get("speaker")
        if speaker is not None and (isinstance(speaker, bool) or not isinstance(speaker, (str, int))):
            raise UserError(f"{where}: field 'speaker' must be a string or an integer, got {speaker!r}")
        samples = _read_or_skip(audio, sample_rate, f"{where} ({audio})", offset or 0.0,
                                duration if offset is not None else None, skipped, len(utterances))
        if samples is None:
            continue
        seconds, slack = len(samples) / sample_rate, max(0.05, 0.02 * (duration or 0))
        if duration is not None and seconds < duration - slack:
            reason = (f"{seconds:.3f} s of audio{f' from {offset:g} s on' if offset else ''}, but the manifest says "
                      f"{duration:.3f} s (truncated file?)")
            log.warning("skipping %s (%s): %s", where, audio, reason)
            if skipped is not None:
                skipped.append(Skipped(audio, f"{where} ({audio}): {reason}", offset, len(utterances),
                                       duration=seconds))
            continue
        if duration is not None and offset is None and seconds > duration + slack:  # a segment without its offset?
            log.warning("%s (%s): %.3f s of audio, the manifest says %.3f s: the whole file is read (an offset reads "
                        "a segment)", where, audio, seconds, duration)
        utterances.append(Utterance(samples, sample_rate, text, audio, where,
                                    None if speaker is None else str(speaker),
                                    offset=None if offset is None else float(offset)))
    return utterances


def read_folder(folder: str | Path, sample_rate: int, need_text: bool = True,
                skipped: list[Skipped] | None = None) -> list[Utterance]:
    """Every .wav/.flac/.ogg below `folder`, its transcript in `<stem>.txt` (or `.TXT`) beside it.

    Training skips (with a warning) audio without a transcript; prediction needs none. Audio that cannot be read is
    skipped with a warning and added to `skipped`, where given.
    """
    utterances = []
    transcripts = {(path.parent, path.stem): path for path in files_below(Path(folder), {".txt"})}  # .txt over .TXT
    for audio in files_below(Path(folder), AUDIO_SUFFIXES):
        transcript = transcripts.get((audio.parent, audio.stem), audio.with_suffix(".txt"))
        text = " ".join(read_lines(transcript)) if transcript.is_file() else None
        if need_text and text is None:
            log.warning("skipping %s: no transcript %s beside it", audio, transcript.name)
            continue
        samples = _read_or_skip(audio, sample_rate, str(audio), skipped=skipped, position=len(utterances))
        if samples is not None:
            utterances.append(Utterance(samples, sample_rate, text, audio, str(audio)))
    return utterances


def fsdd_recordings(folder: str | Path) -> Path:
    """The folder of FSDD's wav files: `folder/recordings` (the dataset's layout) or `folder` itself."""
    folder = Path(folder)
    return folder / "recordings" if (folder / "recordings").is_dir() else folder


def read_fsdd(folder: str | Path, sample_rate: int) -> list[Utterance]:
    """The Free Spoken Digit Dataset: `recordings/{digit}_{speaker}_{take}.wav`, transcripts the digit words."""
    folder = Path(folder)
    recordings = fsdd_recordings(folder)
    if not recordings.is_dir():
        raise UserError(f"FSDD folder not found: {folder}")
    utterances = []
    for audio in sorted(recordings.glob("*.wav")):
        match = FSDD_NAME.match(audio.stem)
        if match is None:
            log.warning("skipping %s: not named {digit}_{speaker}_{take}.wav", audio)
            continue
        samples = _read_or_skip(audio, sample_rate, str(audio))
        if samples is not None:
            digit, speaker, take = match.groups()
            utterances.append(
                Utterance(samples, sample_rate, DIGIT_WORDS[int(digit)], audio, str(audio), speaker, int(take)))
    if not utterances:
        raise UserError(f"{recordings}: no usable {{digit}}_{{speaker}}_{{take}}.wav recordings")
    return utterances


def read_source(path: str | Path, sample_rate: int, need_text: bool = True,
                skipped: list[Skipped] | None = None) -> list[Utterance]:
    """A manifest (.jsonl/.json), a folder of audio, or (for prediction) one audio file; the audio left out is added
    to `skipped`, where given."""
    source = Path(path)
    if source.is_dir():
        utterances = read_folder(source, sample_rate, need_text, skipped)
    elif source.suffix.lower() in (".jsonl", ".json"):
        utterances = read_manifest(source, sample_rate, need_text, skipped)
    elif source.suffix.lower() in AUDIO_SUFFIXES and not need_text:
        samples = read_audio(source, sample_rate)
        utterances = [Utterance(samples, sample_rate, None, source, str(source))]
    elif not source.exists():
        raise UserError(f"speech data not found: {source}")
    else:
        one = "" if need_text else f", or one audio file ({', '.join(sorted(AUDIO_SUFFIXES))})"
        raise UserError(f"{source}: expected a JSONL manifest or a folder of audio files{one}")
    if not utterances:
        if source.is_dir() and not files_below(source, AUDIO_SUFFIXES):
            raise UserError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder or below it")
        raise UserError(f"{source}: no usable utterances (see the warnings above)")
    return utterances


def in_range(value: int, bounds: list[int] | None) -> bool:
    """`value` within the inclusive `[low, high]` (never, for None or [])."""
    return bool(bounds) and bounds[0] <= value <= bounds[1]


def split_fsdd(utterances: list[Utterance], test_takes: list[int] | None, val_takes: list[int] | None,
               test_speakers: list[str]) -> dict[str, list[Utterance]]:
    """Test: the `test_speakers` and takes in `test_takes`; validation: other takes in `val_takes`; train: the rest."""
    split: dict[str, list[Utterance]] = {"train": [], "val": [], "test": []}
    for u in utterances:
        if u.speaker in test_speakers or in_range(u.take, test_takes):
            split["test"].append(u)
        elif in_range(u.take, val_takes):
            split["val"].append(u)
        else:
            split["train"].append(u)
    if missing := sorted(set(test_speakers) - {u.speaker for u in utterances}):
        speakers = sorted({str(u.speaker) for u in utterances})
        raise UserError(f"task.data.fsdd_split: test speaker(s) {missing} have no recordings here; the speakers are "
                        f"{speakers}")
    for name, items in split.items():
        if not items:
            takes = _as_ranges(sorted({u.take for u in utterances if u.take is not None}))
            raise UserError(f"the FSDD split leaves no {name} recordings: test takes {test_takes}, test speakers "
                            f"{test_speakers}, validation takes {val_takes}, and the recordings here have takes "
                            f"{takes} (check task.data.fsdd_split)")
    return split


def _as_ranges(numbers: list[int]) -> str:
    """Sorted whole numbers as inclusive ranges: [0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    starts = [n for i, n in enumerate(numbers) if i == 0 or numbers[i - 1] != n - 1]
    ends = [n for i, n in enumerate(numbers) if i == len(numbers) - 1 or numbers[i + 1] != n + 1]
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in zip(starts, ends))


def connect(pool: list[Utterance], count: int, words: tuple[int, int], pause_s: tuple[float, float],
            gain_db: float, seed: int, sample_rate: int) -> Iterator[Utterance]:
    """`count` connected utterances, each `words[0]..words[1]` utterances of `pool` drawn at random,
    each at a random level within +-`gain_db`, joined (and framed) by faint-noise pauses of `pause_s` seconds."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        picks = rng.choice(len(pool), size=int(rng.integers(words[0], words[1] + 1)))
        pieces = []
        for idx in picks:
            pieces.append(_pause(rng, pause_s, sample_rate))
            pieces.append(pool[idx].samples * 10 ** (rng.uniform(-gain_db, gain_db) / 20))
        pieces.append(_pause(rng, pause_s, sample_rate))
        text = " ".join(pool[idx].text or "" for idx in picks)
        path = Path(f"connected_{seed}_{i:05d}.wav")
        parts = " + ".join(pool[idx].path.name for idx in picks)
        where = f"connected utterance {i} (seed {seed}: {parts})"
        yield Utterance(torch.cat(pieces).float(), sample_rate, text, path, where)


def _pause(rng: np.random.Generator, pause_s: tuple[float, float], sample_rate: int) -> Tensor:
    return _noise(rng, int(rng.uniform(*pause_s) * sample_rate), PAUSE_NOISE)


def _noise(rng: np.random.Generator, n: int, level: float) -> Tensor:
    return torch.from_numpy(rng.normal(0.0, level, n).astype(np.float32))


def noise_floor(samples: Tensor, sample_rate: int, frame_s: float = 0.01) -> float:
    """The recording's background level: the RMS of its quietest `frame_s` frame (at least `PAUSE_NOISE`)."""
    n = min(len(samples), max(1, int(frame_s * sample_rate)))
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    return max(float(frames.pow(2).mean(1).sqrt().min()), PAUSE_NOISE)


def room_tone(utterance: Utterance, seconds: float, rng: np.random.Generator) -> Tensor:
    """`seconds` of the utterance's room tone: noise at its own background level (`noise_floor`)."""
    level = noise_floor(utterance.samples, utterance.sample_rate)
    return _noise(rng, int(seconds * utterance.sample_rate), level)


def after_silence(utterance: Utterance, seconds: float, rng: np.random.Generator) -> Utterance:
    """`utterance` preceded by `seconds` of its room tone (`room_tone`)."""
    pause = room_tone(utterance, seconds, rng)
    return replace(utterance, samples=torch.cat([pause, utterance.samples]),
                   where=f"{utterance.where} after {seconds:.2f} s of silence")
