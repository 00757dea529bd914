"""Music generation: a GRU learns polyphonic piano rolls or performance events and writes new pieces as MIDI."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pretty_midi
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from gru_suite.config import config_number
from gru_suite.distributed import gather_sums
from gru_suite.errors import UserError
from gru_suite.perplexity import perplexity
from gru_suite.task import BackboneFactory, SequenceView, Stage, StepOutput, TaskPlugin
from gru_suite_plugins.music import events as codec
from gru_suite_plugins.music.data import (
    PIANO_RANGE,
    EventDataset,
    MusicData,
    Signature,
    load_corpus,
    load_event_corpus,
    pitch_bounds,
    read_events,
    read_midi,
    read_pm_logged,
    signatures,
    to_range,
)
from gru_suite_plugins.music.model import EventModel, HeadKind, MusicModel, Sampling
from gru_suite_plugins.music.writer import add_signatures, write_performance, write_piece

log = logging.getLogger(__name__)
SILENT_PIECE = ("piece_%03d.mid has no notes: the model sampled silence throughout (a low task.generate.temperature, "
                "a task.generate.top_p of 0.5 or less for piano rolls, or a model trained briefly does; raise them, "
                "give a primer, or train longer)")

UNITS = ("steps", "beats", "seconds")
PITCH_RANGES = ("data", "piano")
RepresentationName = Literal["roll", "events"]
DEFAULT_MAX_EVENTS = 20000


def wrong_generation(gen: DictConfig) -> list[str]:
    """One message per wrong `task.generate` setting of those `MusicTask.numbers` cannot express: a positive
    `temperature`, a `top_p` in (0, 1] or null, a positive `max_note_s` or null; the right numbers are stored as
    floats."""
    wrong = []
    for field, fits, expected, nullable in (("temperature", lambda t: t > 0, "positive", False),
                                            ("top_p", lambda p: 0 < p <= 1, "in (0, 1] (or null)", True),
                                            ("max_note_s", lambda s: s > 0, "positive (or null)", True)):
        value = gen.get(field)
        if value is None and nullable:
            continue
        try:
            number = config_number(value, f"task.generate.{field}")
        except UserError as err:
            wrong.append(str(err))
            continue
        if fits(number):
            OmegaConf.update(gen, field, number, merge=False)
        else:
            wrong.append(f"task.generate.{field} must be {expected}, got {value}")
    return wrong


MIDI_TEMPO_BPM = (3.6, 60_000_000)
"""The tempi a MIDI file can state (bpm): its tempo is 1 to 16,777,215 microseconds a beat (3.58 to 60,000,000 bpm)."""


class MusicTask(TaskPlugin):
    """Model music as a sequence and generate by sampling it one step at a time.

    `task.model.representation` picks what a step is (kept in the task state, so a
    checkpoint rebuilds the same model):

    - `roll`: a time step of a piano roll on the beat grid (the notes sounding);
      `loss` is the negative log-likelihood in nats per time step;
    - `events`: a performance event (Performance RNN: note-on, note-off, 10 ms time
      shift, velocity); `loss` is the NLL in nats per event, `perplexity` its exp.

    Every step of every piece weighs the same. The task delegates to the
    representation's strategy object.
    """

    choices = (("generate.unit", UNITS), ("model.head", get_args(HeadKind)), ("data.pitch_range", PITCH_RANGES),
               ("model.representation", get_args(RepresentationName)))
    path_settings = ("data.path", "generate.primer")
    trained_settings = ("data.steps_per_beat", "data.pitch_range")  # the grid and the pitches a model was built on
    numbers = (*TaskPlugin.numbers, ("data.steps_per_beat", int, 1), ("data.crop_steps", int, 1),
               ("data.transpose", int, 0), ("generate.pieces", int, 1), ("generate.length", float, 0),
               ("generate.tempo", float, *MIDI_TEMPO_BPM), ("generate.max_events", int, 1), ("generate.top_k", int, 1),
               ("generate.program", int, 0, 127), ("generate.velocity", int, 1, 127),
               ("generate.seed", int, -(2**43), 2**43),  # seed * 1_000_003 + piece fits torch's 64-bit seed
               ("model.embed_size", int, 1), ("model.head_units", int, 1), ("model.dropout", float, 0, 1, True),
               ("model.input_dropout", float, 0, 1, True))
    required = ("data.path", "data.split", "data.steps_per_beat", "model.embed_size", "model.head_units",
                "generate.seed", "generate.pieces", "generate.length", "generate.tempo", "generate.program",
                "generate.velocity", "model.dropout", "model.input_dropout")

    @classmethod
    def wrong_settings(cls, cfg: DictConfig) -> list[str]:
        """`numbers` and switches, then the generation settings they cannot express."""
        return super().wrong_settings(cfg) + wrong_generation(cfg.generate)

    def __init__(self, cfg: DictConfig, state: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg, state)
        asked = cfg.model.get("representation", "roll")
        name = self.state.setdefault("representation", asked)
        if name != asked:
            raise UserError(f"the checkpoint's model uses representation {name!r}; "
                            f"task.model.representation={asked} cannot change it")
        self.representation: Representation = REPRESENTATIONS[name](cfg, self.state)

    @property
    def primer(self) -> Any:
        return self.representation.primer

    def datamodule(self) -> MusicData:
        return self.representation.datamodule()

    def build_model(self, backbone: BackboneFactory) -> nn.Module:
        return self.representation.build_model(backbone)

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor], stage: Stage) -> StepOutput:
        return self.representation.step(model, batch, stage)

    def epoch_end(self, stage: Stage) -> dict[str, float]:
        return self.representation.epoch_end(stage)

    def predict_step(self, model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
        return self.representation.predict_step(model, batch)

    def write_predictions(self, predictions: list[Any], datamodule: MusicData, out_dir: Path) -> list[Path]:
        return self.representation.write_predictions(predictions, datamodule, out_dir)

    def describe_sequence(self, datamodule: MusicData, batch: Tensor, sample: int) -> SequenceView:
        """Generated piece `sample` of the batch as the GRU read it: a start step, the primer, then each step
        sampled and fed back."""
        return self.representation.describe_generation(int(batch[sample]))


class Representation(ABC):
    """What a step of a piece is, with its data, model, loss, generation and writers.

    Shares the task's config and its state dict (what is fitted to the data goes there).
    """

    def __init__(self, cfg: DictConfig, state: dict[str, Any]) -> None:
        self.cfg = cfg
        self.state = state
        self.primer: Any = None
        self.signatures: list[Signature] = []
        """The primer's time and key signatures, which the pieces that continue it carry."""

    @abstractmethod
    def datamodule(self) -> MusicData: ...

    @abstractmethod
    def build_model(self, backbone: BackboneFactory) -> nn.Module: ...

    @abstractmethod
    def step(self, model: Any, batch: tuple[Tensor, Tensor], stage: Stage) -> StepOutput: ...

    def epoch_end(self, stage: Stage) -> dict[str, float]:
        return {}

    @abstractmethod
    def predict_step(self, model: Any, batch: Tensor) -> dict[str, Tensor]: ...

    @abstractmethod
    def write_predictions(self, predictions: list[Any], datamodule: MusicData, out_dir: Path) -> list[Path]: ...

    @abstractmethod
    def describe_generation(self, piece: int) -> SequenceView: ...

    def unit(self) -> str:
        return self.cfg.generate.unit  # one of UNITS (`choices`)

    def read_primer(self) -> None:
        """`generate.primer` (if any), checked against the requested length, and its time and key signatures."""
        path = self.cfg.generate.get("primer")
        pm = read_pm_logged(path) if path else None  # read once: its warnings said once
        self.primer = self._primer(pm)
        self.signatures = signatures(pm) if pm is not None else []

    @abstractmethod
    def _primer(self, pm: pretty_midi.PrettyMIDI | None) -> Any:
        """The primer `pm` (of the file `generate.primer`) as the model reads it; None: no primer."""

    def sampling(self) -> Sampling:
        gen = self.cfg.generate
        return Sampling(gen.temperature, gen.top_k, gen.top_p)

    def generator(self, batch: Tensor) -> torch.Generator:
        """A CPU generator seeded by `generate.seed` and the first piece index of `batch`."""
        return torch.Generator().manual_seed(int(self.cfg.generate.seed) * 1_000_003 + int(batch[0]))


class RollRepresentation(Representation):
    """Binary piano rolls on a beat grid, cut to the model's pitch range (`low..high` in the state)."""

    def datamodule(self) -> MusicData:
        data = self.cfg.data
        self.state.setdefault("steps_per_beat", int(data.steps_per_beat))
        if "low" in self.state:  # restored: read the pieces only if training or testing asks for them
            def load() -> dict[str, list[Tensor]]:
                return self._ranged(self._read())
        else:
            corpus = self._read()
            low, high = pitch_bounds(corpus, data.path) if data.pitch_range == "data" else PIANO_RANGE
            self.state.update(low=low, high=high)
            ranged = self._ranged(corpus)

            def load() -> dict[str, list[Tensor]]:
                return ranged
        self.read_primer()
        return MusicData(load, self.cfg.generate.pieces, data.batch_size, data.get("crop_steps"),
                         data.transpose, data.get("num_workers", 0))

    def _read(self) -> dict[str, list[np.ndarray]]:
        data = self.cfg.data
        return load_corpus(data.path, self.state["steps_per_beat"], data.drums, list(data.split))

    def _ranged(self, corpus: dict[str, list[np.ndarray]]) -> dict[str, list[Tensor]]:
        """Rolls cut to the model's pitch range: out-of-range notes are an error in JSON, dropped from MIDI."""
        source, low, high = str(self.cfg.data.path), self.state["low"], self.state["high"]
        out, dropped, counted = {}, 0, set()  # counted: the pieces whose notes are counted (one in several splits)
        for split, pieces in corpus.items():
            out[split], dropped_here = [], 0
            for i, roll in enumerate(pieces):
                ranged, outside = to_range(roll, low, high)
                if outside and source.endswith(".json"):
                    t, pitch = map(int, np.argwhere(_outside(roll, low, high))[0])
                    raise UserError(f"{source}: {split} piece {i}, step {t}: pitch {pitch} is out of range "
                                    f"({low}-{high}, task.data.pitch_range={self.cfg.data.pitch_range})")
                dropped_here += 0 if id(roll) in counted else outside
                counted.add(id(roll))
                out[split].append(torch.from_numpy(ranged))
            if dropped_here and not any(bool(roll.any()) for roll in out[split]):
                which = "" if sum(other is pieces for other in corpus.values()) > 1 else f"{split} "  # all splits'
                raise UserError(f"{source}: the {which}pieces have no notes inside the model's pitch range "
                                f"{low}-{high} (all {dropped_here} note-steps lie outside it)")
            dropped += dropped_here
        if dropped:
            log.warning("%s: dropped %d note-steps outside the pitch range %d-%d", source, dropped, low, high)
        return out

    def _primer(self, pm: pretty_midi.PrettyMIDI | None) -> Tensor | None:
        """The primer's roll in the model's range, checked against the requested length."""
        path = self.cfg.generate.get("primer")
        steps = self.generate_steps()
        if pm is None:
            return None
        roll = read_midi(path, self.state["steps_per_beat"], self.cfg.data.drums, pm)
        roll, outside = to_range(roll, self.state["low"], self.state["high"])
        if outside:
            log.warning("primer %s: dropped %d note-steps outside the model's pitch range", path, outside)
        if len(roll) >= steps:  # the piece would be the primer alone
            gen = self.cfg.generate
            raise UserError(f"primer {path} is {len(roll)} steps long, not shorter than the requested length of "
                            f"{gen.length:g} {self.unit()} ({steps} steps), so nothing would be generated (raise "
                            "task.generate.length)")
        return torch.from_numpy(roll)

    def generate_steps(self) -> int:
        """`generate.length` in steps (its `unit` is steps, beats or seconds at `generate.tempo`)."""
        gen, spb = self.cfg.generate, self.state["steps_per_beat"]
        beats = {"steps": gen.length / spb, "beats": gen.length, "seconds": gen.length * gen.tempo / 60}[self.unit()]
        steps = round(beats * spb)
        if steps < 1:
            raise UserError(f"task.generate.length={gen.length} {gen.unit} is less than one step")
        return steps

    def build_model(self, backbone: BackboneFactory) -> MusicModel:
        model = self.cfg.model
        return MusicModel(backbone, self.state["high"] - self.state["low"] + 1, model.head, model.embed_size,
                          model.head_units, model.dropout, model.get("input_dropout", 0.0),
                          model.get("input_skip", False))

    def step(self, model: MusicModel, batch: tuple[Tensor, Tensor], stage: Stage) -> StepOutput:
        roll, lengths = batch
        steps = lengths.sum()
        return StepOutput(model.nll(roll, lengths).sum() / steps, len(lengths), loss_weight=steps)

    def predict_step(self, model: MusicModel, batch: Tensor) -> dict[str, Tensor]:
        """Pieces `batch` (indices), sampled with a generator seeded by `generate.seed` and the first index."""
        rolls = model.generate(len(batch), self.generate_steps(), self.sampling(), self.generator(batch), self.primer)
        return {"index": batch.cpu(), "roll": rolls.bool().cpu()}

    def describe_generation(self, piece: int) -> SequenceView:
        """The silent start step, then the first `steps - 1` steps (the last is sampled, never fed back), by
        their beat."""
        spb, steps = self.state["steps_per_beat"], self.generate_steps()
        primed = f" (the first {len(self.primer)} the primer's)" if self.primer is not None else ""
        return SequenceView(f"piece_{piece:03d}.mid as generated: a silent start, then its first {steps - 1} steps "
                            f"as fed back{primed}, by beat", ["start", *(f"{1 + t / spb:g}" for t in range(steps - 1))])

    def write_predictions(self, predictions: list[Any], datamodule: MusicData, out_dir: Path) -> list[Path]:
        gen, paths = self.cfg.generate, []
        for batch in predictions:
            for index, roll in zip(batch["index"].tolist(), batch["roll"].numpy()):
                if not roll.any():
                    log.warning(SILENT_PIECE, index)
                paths += write_piece(roll, Path(out_dir) / f"piece_{index:03d}", self.state["low"],
                                     self.state["steps_per_beat"], gen.tempo, gen.program, gen.velocity,
                                     self.signatures)
        return paths


class EventRepresentation(Representation):
    """Performance events (see `events.py`) over all 128 pitches, in real time; the state holds `vocab_size`."""

    def __init__(self, cfg: DictConfig, state: dict[str, Any]) -> None:
        super().__init__(cfg, state)
        self.restored = "vocab_size" in self.state
        vocab = self.state.setdefault("vocab_size", codec.VOCAB)
        if vocab != codec.VOCAB:
            raise UserError(f"the checkpoint's model has {vocab} events, this event codec {codec.VOCAB}")
        self._sums: dict[str, tuple[Tensor, Tensor]] = {}

    def datamodule(self) -> MusicData:
        data = self.cfg.data
        self.state.setdefault("steps_per_beat", int(data.steps_per_beat))  # the pictures' beat grid
        load: Callable[[], dict[str, list[Tensor]]] = self._read
        if not self.restored:  # a new model: read (and check) the data now
            corpus = self._read()
            load = lambda: corpus  # noqa: E731
        self.read_primer()
        return MusicData(load, self.cfg.generate.pieces, data.batch_size, data.get("crop_steps"),
                         data.transpose, data.get("num_workers", 0), dataset=EventDataset)

    def _read(self) -> dict[str, list[Tensor]]:
        data = self.cfg.data
        corpus = load_event_corpus(data.path, data.drums, list(data.split))
        return {split: [torch.from_numpy(events) for events in pieces] for split, pieces in corpus.items()}

    def length(self) -> dict[str, Any]:
        """`generate.length` as `generate`'s stopping rule: events (unit steps) or seconds (beats at `tempo`)."""
        gen = self.cfg.generate
        unit = self.unit()
        if gen.length <= 0:
            raise UserError(f"task.generate.length must be positive, got {gen.length}")
        if unit == "steps":
            if int(gen.length) < 1:
                raise UserError(f"task.generate.length={gen.length} {gen.unit} is less than one event")
            return {"max_events": int(gen.length), "seconds": None}
        seconds = float(gen.length) * (60 / gen.tempo if unit == "beats" else 1)
        max_events = int(gen.get("max_events") or DEFAULT_MAX_EVENTS)
        return {"max_events": max_events, "seconds": seconds}

    def _primer(self, pm: pretty_midi.PrettyMIDI | None) -> list[int]:
        """The primer's events, checked against the requested length."""
        path = self.cfg.generate.get("primer")
        length = self.length()
        if pm is None:
            return []
        events = read_events(path, self.cfg.data.drums, pm).tolist()
        if length["seconds"] is not None and codec.duration(events) >= length["seconds"]:
            raise UserError(f"primer {path} lasts {codec.duration(events):.2f} s, not shorter than the requested "
                            f"length of {length['seconds']:.2f} s, so nothing would be generated (raise "
                            "task.generate.length)")
        if len(events) >= length["max_events"]:  # the piece would be the primer alone
            limit, setting = ("requested length", "task.generate.length") if length["seconds"] is None else \
                ("task.generate.max_events cap", "task.generate.max_events")
            raise UserError(f"primer {path} is {len(events)} events long, not shorter than the {limit} of "
                            f"{length['max_events']} events, so nothing would be generated (raise {setting})")
        return events

    def build_model(self, backbone: BackboneFactory) -> EventModel:
        model = self.cfg.model
        return EventModel(backbone, self.state["vocab_size"], model.embed_size, model.dropout)

    def step(self, model: EventModel, batch: tuple[Tensor, Tensor], stage: Stage) -> StepOutput:
        events, lengths = batch
        count = lengths.sum()  # a tensor: read on the device at the epoch's end, not each step
        total = model.nll(events, lengths).sum()
        if stage != "train":  # for the epoch's perplexity
            nll, seen = self._sums.get(stage, (0.0, 0))
            precise = torch.float32 if total.device.type == "mps" else torch.float64  # many batches; MPS: no float64
            self._sums[stage] = (nll + total.detach().to(precise), seen + count)
        return StepOutput(total / count, len(lengths), loss_weight=count)

    def epoch_end(self, stage: Stage) -> dict[str, float]:
        """`perplexity`: exp of the mean NLL per event over the epoch, over every DDP process's pieces."""
        nll, seen = gather_sums(*map(float, self._sums.pop(stage, (0.0, 0))))  # every process joins, pieces or none
        return {"perplexity": perplexity(nll, seen)} if seen else {}

    def predict_step(self, model: EventModel, batch: Tensor) -> dict[str, Tensor]:
        """Pieces `batch` (indices): events (B, T) padded with -1, and their lengths."""
        sequences = model.generate(len(batch), self.sampling(), self.generator(batch), self.primer, **self.length())
        lengths = torch.tensor([len(s) for s in sequences])
        events = torch.full((len(sequences), int(lengths.max())), -1, dtype=torch.long)
        for b, sequence in enumerate(sequences):
            events[b, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return {"index": batch.cpu(), "events": events, "lengths": lengths}

    def describe_generation(self, piece: int) -> SequenceView:
        """The start token, the primer, then each event sampled and fed back, unlabelled: the batch's pieces are
        all fed until the last one ends, so a piece that ended sooner is followed by events it did not keep."""
        primed = f", the primer's {len(self.primer)} events" if self.primer else ""
        return SequenceView(f"piece_{piece:03d}.mid as generated: the start token{primed}, then each event fed back "
                            "(until the batch's last piece ended)")

    def write_predictions(self, predictions: list[Any], datamodule: MusicData, out_dir: Path) -> list[Path]:
        gen, seconds, paths = self.cfg.generate, self.length()["seconds"], []
        for batch in predictions:
            for index, events, n in zip(batch["index"].tolist(), batch["events"], batch["lengths"].tolist()):
                events = events[:n].tolist()
                if seconds is not None and codec.duration(events) < seconds:
                    log.warning("piece_%03d.mid: stopped at task.generate.max_events=%d events after %.2f of %.2f s; "
                                "the rest is silence", index, n, codec.duration(events), seconds)
                pm = add_signatures(codec.decode(events, gen.program, gen.tempo, end=seconds,
                                                 max_note_s=self.max_note_s()), self.signatures)
                if not pm.instruments[0].notes:
                    log.warning(SILENT_PIECE, index)
                paths += write_performance(pm, Path(out_dir) / f"piece_{index:03d}", self.state["steps_per_beat"])
        return paths

    def max_note_s(self) -> float | None:
        """`generate.max_note_s`: seconds after which a note never released stops (None: at the piece's end)."""
        value = self.cfg.generate.get("max_note_s", 5.0)  # checkpoints from before the setting: its default
        return None if value is None else float(value)  # checked with the other generation settings


REPRESENTATIONS: dict[RepresentationName, type[Representation]] = {"roll": RollRepresentation,
                                                                    "events": EventRepresentation}


def _outside(roll: np.ndarray, low: int, high: int) -> np.ndarray:
    """Where `roll` (steps, 128) has notes outside `low..high`."""
    mask = roll.copy()
    mask[:, low:high + 1] = False
    return mask
