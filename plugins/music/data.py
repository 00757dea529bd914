"""Music data: MIDI files or JSON piano rolls -> binary rolls on a beat grid (or event sequences), padded batches."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pretty_midi
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from gru_suite.data import SplitDataModule
from gru_suite.errors import UserError, first_named, not_a_file
from gru_suite.files import files_below
from gru_suite_plugins.music.events import NOTE_OFF, encode, transpose

log = logging.getLogger(__name__)

MIDI_PITCHES = 128
PIANO_RANGE = (21, 108)
SPLITS = ("train", "valid", "test")
MIDI_SUFFIXES = (".mid", ".midi")
Corpus = dict[str, list[np.ndarray]]
"""Pieces per split, each a boolean roll (steps, 128) over all MIDI pitches (or, for events, an int64 array)."""
Piece = TypeVar("Piece")


def midi_to_roll(pm: pretty_midi.PrettyMIDI, steps_per_beat: int, drums: bool = False) -> np.ndarray:
    """A boolean roll (steps, 128) on a grid of `steps_per_beat` steps per quarter note, following the file's
    tempo map (whatever its time signature: pretty_midi's beats are dotted quarters in 6/8, halves in 2/2).

    Onsets and offsets snap to the nearest step; every note lasts at least one step.
    The roll ends at the file's end time, so trailing silence is kept.
    """
    def steps_at(times: np.ndarray) -> np.ndarray:
        quarters = np.array([pm.time_to_tick(t) for t in times]) / pm.resolution
        return np.rint(quarters * steps_per_beat).astype(int)

    notes = [n for inst in pm.instruments if drums or not inst.is_drum for n in inst.notes]
    if not notes:
        return np.zeros((0, MIDI_PITCHES), dtype=bool)
    on = steps_at(np.array([n.start for n in notes]))
    off = np.maximum(steps_at(np.array([n.end for n in notes])), on + 1)
    roll = np.zeros((max(int(off.max()), int(steps_at(np.array([pm.get_end_time()]))[0])), MIDI_PITCHES), bool)
    for note, start, stop in zip(notes, on, off):
        roll[start:stop, note.pitch] = True
    return roll


def read_pm(path: str | Path) -> pretty_midi.PrettyMIDI:
    """`path` read by pretty_midi; its warnings (say, tempo events on a track other than the first) name the file."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pm = pretty_midi.PrettyMIDI(str(path))
    except Exception as err:  # mido and pretty_midi raise many types for malformed files
        if not os.path.isfile(path):
            raise not_a_file(path, "MIDI file") from err
        if _header(path) not in (b"MThd", None):
            raise UserError(f"{path}: not a MIDI file (it does not start with a MIDI header, MThd)") from err
        detail = f"{type(err).__name__}: {err}" if str(err) else f"{type(err).__name__}: the file ends too early"
        raise UserError(f"{path}: not a readable MIDI file ({detail})") from err
    for warning in caught:  # what pretty_midi says of the file; a library's deprecation notice stays as it was
        deprecation = issubclass(warning.category, DeprecationWarning)
        warnings.warn(warning.message if deprecation else MidiWarning(path, str(warning.message)), stacklevel=2)
    return pm


def _header(path: str | Path) -> bytes | None:
    """The first 4 bytes of file `path`; None where it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError:
        return None


def read_pm_logged(path: str | Path) -> pretty_midi.PrettyMIDI:
    """`read_pm` of a file given by name (a primer), what pretty_midi says of it logged as one line each (a
    Python warning would print its source line too, and miss the run's log)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MidiWarning)
        pm = read_pm(path)
    for warning in caught:
        if isinstance(warning.message, MidiWarning):
            log.warning("%s", " ".join(str(warning.message).split()))
        else:
            warnings.warn(warning.message, stacklevel=2)
    return pm


class MidiWarning(UserWarning):
    """What pretty_midi warns of one MIDI file, with the file's path."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(path, message)  # the arguments, so that it pickles (a warning may cross processes)
        self.path, self.message = Path(path), message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _no_notes(path: str | Path, drums: bool) -> UserError:
    ignored = " (drum tracks are ignored; task.data.drums=true reads them)"
    return UserError(f"{path}: no notes{'' if drums else ignored}")


def read_midi(
    path: str | Path, steps_per_beat: int, drums: bool = False, pm: pretty_midi.PrettyMIDI | None = None
) -> np.ndarray:
    """The roll of one MIDI file (`pm`, where it has been read already); a corrupt file or one without notes is a
    UserError naming it."""
    roll = midi_to_roll(read_pm(path) if pm is None else pm, steps_per_beat, drums)
    if not roll.any():
        raise _no_notes(path, drums)
    return roll


@dataclass(frozen=True)
class Signature:
    """A time or key signature of a MIDI file (a primer's, carried into the pieces that continue it), at its quarter
    note (on the file's tempo map) and at its second."""

    quarter: float
    second: float
    mark: pretty_midi.TimeSignature | pretty_midi.KeySignature


def signatures(pm: pretty_midi.PrettyMIDI) -> list[Signature]:
    """The time and key signatures of a MIDI file, in time order."""
    marks = sorted([*pm.time_signature_changes, *pm.key_signature_changes], key=lambda mark: mark.time)
    return [Signature(pm.time_to_tick(mark.time) / pm.resolution, mark.time, mark) for mark in marks]


def read_events(path: str | Path, drums: bool = False, pm: pretty_midi.PrettyMIDI | None = None) -> np.ndarray:
    """The events (int64) of one MIDI file (`pm`, where it has been read already); a corrupt file or one without
    notes is a UserError naming it."""
    events = np.asarray(encode(read_pm(path) if pm is None else pm, drums), dtype=np.int64)
    if not (events < NOTE_OFF).any():
        raise _no_notes(path, drums)
    return events


def read_folder(folder: Path, read: Callable[[Path], Piece]) -> list[Piece]:
    """`read` of every .mid/.midi below `folder` (sorted by path); unusable files are skipped with a warning."""
    files = files_below(folder, MIDI_SUFFIXES)
    pieces, skipped = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MidiWarning)
        for path in files:
            try:
                pieces.append(read(path))
            except UserError as err:
                log.warning("skipping %s", err)
                skipped.append(path.name)
    _report_midi_warnings(folder, [w.message for w in caught], len(files))
    if skipped:
        log.warning("skipped %d of %d MIDI files in %s", len(skipped), len(files), folder)
    if not pieces:
        detail = f"{len(skipped)} unusable: {', '.join(skipped)}" if skipped else "no .mid or .midi files"
        raise UserError(f"{folder}: no usable MIDI files ({detail})")
    return pieces


def _report_midi_warnings(folder: Path, caught: list[Warning | str], files: int) -> None:
    """One line per distinct MIDI warning of a folder's files, naming how many files and the first few of them;
    other warnings are warned again as they came."""
    paths_by_message: dict[str, list[str]] = {}
    for warning in caught:
        if isinstance(warning, MidiWarning):
            paths_by_message.setdefault(warning.message, []).append(str(warning.path.relative_to(folder)))
        else:
            warnings.warn(warning, stacklevel=3)
    for message, paths in paths_by_message.items():
        log.warning("%s: %d of %d MIDI files: %s (%s)", folder, len(paths), files, " ".join(message.split()),
                    first_named(paths))


def read_json_rolls(path: Path) -> Corpus:
    """Piano rolls in the JSB Chorales layout: `{"train": [...], "valid": [...], "test": [...]}`,
    each piece a list of steps, each step a list of MIDI pitches."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: not a readable JSON file ({err})") from err
    if data.startswith(b"MThd"):
        raise UserError(f"{path}: a MIDI file, named .json: name it .mid")
    try:
        raw = json.loads(data.decode("utf-8-sig"))  # a byte-order mark too
    except ValueError as err:
        raise UserError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), list) or not raw["train"]:
        raise UserError(f'{path}: expected {{"train": [...], "valid": [...], "test": [...]}} with training pieces')
    corpus: Corpus = {}
    for split in SPLITS:
        pieces = raw.get(split) or []
        corpus[split] = [_json_piece(piece, f"{path}: {split} piece {i}") for i, piece in enumerate(pieces)]
    return corpus


def _json_piece(piece: object, where: str) -> np.ndarray:
    if not isinstance(piece, list) or not piece:
        raise UserError(f"{where}: expected a non-empty list of time steps")
    roll = np.zeros((len(piece), MIDI_PITCHES), dtype=bool)
    for t, step in enumerate(piece):
        if not isinstance(step, list):
            raise UserError(f"{where}, step {t}: expected a list of MIDI pitches, got {step!r}")
        for pitch in step:
            if isinstance(pitch, float) and pitch.is_integer():  # 67.0, as some JSB Chorales copies write pitches
                pitch = int(pitch)
            if isinstance(pitch, bool) or not isinstance(pitch, int):
                raise UserError(f"{where}, step {t}: expected an integer MIDI pitch 0-127, got {pitch!r}")
            if not 0 <= pitch < MIDI_PITCHES:
                raise UserError(f"{where}, step {t}: pitch {pitch!r} is out of range (MIDI pitches are 0-127)")
            roll[t, pitch] = True
    return roll


def load_corpus(path: str | Path, steps_per_beat: int, drums: bool, split: Sequence[float]) -> Corpus:
    """A JSON file of rolls (its own splits), or one MIDI file / a folder of them split by `split` shares."""
    source = Path(path)
    if source.suffix.lower() == ".json" and source.is_file():
        corpus = read_json_rolls(source)
        if not corpus["valid"]:
            raise UserError(f"{source}: no 'valid' pieces to choose the model on")
        if not corpus["test"]:
            log.info("%s has no test split: testing on the valid split", source)
            corpus["test"] = corpus["valid"]
        return corpus
    return _load_midi(source, partial(read_midi, steps_per_beat=steps_per_beat, drums=drums), split)


def load_event_corpus(path: str | Path, drums: bool, split: Sequence[float]) -> Corpus:
    """The events of one MIDI file or a folder of them, split by `split` shares."""
    source = Path(path)
    if source.suffix.lower() == ".json":
        raise UserError(f"{source}: task.model.representation=events reads MIDI files (a .mid or a folder), "
                        "not JSON piano rolls (use task.model.representation=roll)")
    return _load_midi(source, partial(read_events, drums=drums), split)


def _load_midi(source: Path, read: Callable[[Path], np.ndarray], split: Sequence[float]) -> Corpus:
    if source.is_file():
        try:
            pieces = [read(source)]
        except UserError as err:
            if source.suffix.lower() in MIDI_SUFFIXES:
                raise
            rolls = '{"train": [...], "valid": [...]}, each piece a list of steps, each a list of MIDI pitches'
            raise UserError(f"{source}: neither MIDI nor piano rolls in JSON (a .json file: {rolls}): {err}") from err
    elif source.is_dir():
        pieces = read_folder(source, read)
    else:
        raise UserError(f"music data not found: {source} (expected a folder of MIDI files, a .mid or a .json)")
    return split_pieces(pieces, split, source)


def split_pieces(pieces: list[np.ndarray], split: Sequence[float], source: Path) -> Corpus:
    """Train/valid/test by `split` shares of the pieces (a fixed shuffle), at least one piece each; shares summing to
    less than 1 leave pieces out."""
    if len(split) != 3 or any(s < 0 for s in split) or sum(split) > 1 + 1e-9:
        raise UserError(f"task.data.split must be three shares summing to at most 1, got {list(split)}")
    n = len(pieces)
    if n < 3:
        log.warning("%s: only %d piece(s), so the train, valid and test splits (those this run reads) are all of "
                    "them", source, n)
        return {s: pieces for s in SPLITS}
    order = np.random.default_rng(0).permutation(n)
    n_valid, n_test = (max(1, round(share * n)) for share in split[1:])
    n_train = n - n_valid - n_test  # shares summing to 1: training takes the rest, else its own share
    n_train = n_train if sum(split) > 1 - 1e-9 else min(n_train, round(split[0] * n))
    if n_train < 1:
        raise UserError(f"{source}: {n} pieces leave none for training with split {list(split)}")
    chosen = [pieces[i] for i in order]
    ends = np.cumsum([n_train, n_valid, n_test])
    return {"train": chosen[:ends[0]], "valid": chosen[ends[0]:ends[1]], "test": chosen[ends[1]:ends[2]]}


def pitch_bounds(corpus: Corpus, source: str | Path) -> tuple[int, int]:
    """Lowest and highest pitch sounding anywhere in the corpus (read from `source`, which an error names)."""
    used = np.flatnonzero(np.any([roll.any(0) for pieces in corpus.values() for roll in pieces], axis=0))
    if not len(used):
        raise UserError(f"{source}: no piece holds a note")
    return int(used[0]), int(used[-1])


def to_range(roll: np.ndarray, low: int, high: int) -> tuple[np.ndarray, int]:
    """The roll's pitches `low..high` (steps, high - low + 1) and how many note-steps fell outside."""
    outside = int(roll[:, :low].sum() + roll[:, high + 1:].sum())
    return roll[:, low:high + 1], outside


class CroppedPieces(Dataset):
    """Pieces as padded batches `(pieces (B, T, ...) of `dtype`, lengths (B,))` with `__getitems__`, zeros past
    each length. Training batches take random crops of `crop_steps` (a piece of n steps gives ceil(n / crop_steps)
    of them per epoch), each then `_transposed` by a random shift of up to `transpose` semitones."""

    dtype = torch.float32

    def __init__(self, pieces: list[Tensor], crop_steps: int | None = None, transpose: int = 0) -> None:
        self.pieces = pieces
        self.crop_steps = crop_steps
        self.transpose = transpose
        crops = [-(-len(p) // crop_steps) if crop_steps else 1 for p in pieces]
        self.owner = [i for i, n in enumerate(crops) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.owner)

    def _transposed(self, piece: Tensor, owner: int) -> Tensor:
        """`piece` (a crop of piece `owner`) shifted by a random number of semitones."""
        raise NotImplementedError

    def _sample(self, index: int) -> Tensor:
        owner = self.owner[index]
        piece = self.pieces[owner]
        if self.crop_steps and len(piece) > self.crop_steps:
            start = int(torch.randint(len(piece) - self.crop_steps + 1, ()))
            piece = piece[start:start + self.crop_steps]
        return self._transposed(piece, owner) if self.transpose else piece

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        pieces = [self._sample(i) for i in indices]
        lengths = torch.tensor([len(p) for p in pieces])
        return pad_sequence(pieces, batch_first=True).to(self.dtype), lengths


class RollDataset(CroppedPieces):
    """Piano rolls (steps, P) as padded batches `(roll (B, T, P) float, lengths (B,))`; a transposition keeps
    every note of the piece in range."""

    def __init__(self, pieces: list[Tensor], crop_steps: int | None = None, transpose: int = 0) -> None:
        super().__init__(pieces, crop_steps, transpose)
        used = [p.any(0).nonzero().flatten() for p in pieces]
        self.room = [(int(u[0]), p.size(1) - 1 - int(u[-1])) if len(u) else (0, 0) for u, p in zip(used, pieces)]

    def _transposed(self, piece: Tensor, owner: int) -> Tensor:
        below, above = self.room[owner]
        low, high = -min(self.transpose, below), min(self.transpose, above)
        return torch.roll(piece, int(torch.randint(low, high + 1, ())), dims=1)


class EventDataset(CroppedPieces):
    """Event sequences as padded batches `(events (B, T) int64, lengths (B,))`, event 0 past each length; a
    transposition drops the note events that leave 0..127."""

    dtype = torch.long

    def _transposed(self, piece: Tensor, owner: int) -> Tensor:
        shifted = transpose(piece.numpy(), int(torch.randint(-self.transpose, self.transpose + 1, ())))
        return torch.from_numpy(shifted) if len(shifted) else piece


class PieceIndices(Dataset):
    """Indices of the pieces to generate: a predict batch is a tensor of them."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitems__(self, indices: Sequence[int]) -> Tensor:
        return torch.as_tensor(list(indices))


class MusicData(SplitDataModule):
    """Train/valid/test pieces (read on first `setup`, so generating needs no data) and generation indices.

    `dataset` (RollDataset or EventDataset) batches the pieces of one split.
    """

    def __init__(
        self,
        load: Callable[[], dict[str, list[Tensor]]],
        pieces: int,
        batch_size: int,
        crop_steps: int | None,
        transpose: int,
        num_workers: int = 0,
        dataset: Callable[..., Dataset] = RollDataset,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.load = load
        self.make_dataset = dataset
        self.crop_steps = crop_steps
        self.transpose = transpose
        self.sets["predict"] = PieceIndices(pieces)

    def setup(self, stage: str) -> None:
        if stage == "predict" or "train" in self.sets:
            return
        corpus = self.load()
        self.sets["train"] = self.make_dataset(corpus["train"], self.crop_steps, self.transpose)
        self.sets["val"] = self.make_dataset(corpus["valid"])
        self.sets["test"] = self.make_dataset(corpus["test"])

    def dataset(self, stage: str) -> Dataset:
        self.setup(stage)
        return self.sets[stage]
