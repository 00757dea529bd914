"""Music generation: a GRU learns polyphonic piano rolls and writes new pieces as MIDI."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gru_suite.errors import UserError
from gru_suite.task import BackboneFactory, Stage, StepOutput, TaskPlugin
from gru_suite_plugins.music.data import PIANO_RANGE, MusicData, load_corpus, pitch_bounds, read_midi, to_range
from gru_suite_plugins.music.model import MusicModel, Sampling
from gru_suite_plugins.music.writer import write_piece

log = logging.getLogger(__name__)

UNITS = ("steps", "beats", "seconds")


class MusicTask(TaskPlugin):
    """Model the notes of each time step given the steps before; generate by sampling step by step.

    `loss` (logged as `val/loss`, `test/loss`) is the negative log-likelihood in nats
    per time step, every time step of every piece weighted equally.
    """

    def datamodule(self) -> MusicData:
        data = self.cfg.data
        self.state.setdefault("steps_per_beat", int(data.steps_per_beat))
        if "low" in self.state:  # restored: read the pieces only if training or testing asks for them
            load: Callable[[], dict[str, list[Tensor]]] = lambda: self._ranged(self._read())
        else:
            if data.pitch_range not in ("data", "piano"):
                raise UserError(f"task.data.pitch_range must be 'data' or 'piano', got {data.pitch_range!r}")
            corpus = self._read()
            low, high = pitch_bounds(corpus) if data.pitch_range == "data" else PIANO_RANGE
            self.state.update(low=low, high=high)
            ranged = self._ranged(corpus)
            load = lambda: ranged  # noqa: E731
        self.primer = self._primer()
        return MusicData(load, self.cfg.generate.pieces, data.batch_size, data.get("crop_steps"),
                         data.transpose, data.get("num_workers", 0))

    def _read(self) -> dict[str, list[np.ndarray]]:
        data = self.cfg.data
        return load_corpus(data.path, self.state["steps_per_beat"], data.drums, list(data.split))

    def _ranged(self, corpus: dict[str, list[np.ndarray]]) -> dict[str, list[Tensor]]:
        """Rolls cut to the model's pitch range: out-of-range notes are an error in JSON, dropped from MIDI."""
        source, low, high = str(self.cfg.data.path), self.state["low"], self.state["high"]
        out, dropped = {}, 0
        for split, pieces in corpus.items():
            out[split] = []
            for i, roll in enumerate(pieces):
                ranged, outside = to_range(roll, low, high)
                if outside and source.endswith(".json"):
                    t, pitch = map(int, np.argwhere(_outside(roll, low, high))[0])
                    raise UserError(f"{source}: {split} piece {i}, step {t}: pitch {pitch} is out of range "
                                    f"({low}-{high}, task.data.pitch_range={self.cfg.data.pitch_range})")
                dropped += outside
                out[split].append(torch.from_numpy(ranged))
        if dropped:
            log.warning("%s: dropped %d note-steps outside the pitch range %d-%d", source, dropped, low, high)
        return out

    def _primer(self) -> Tensor | None:
        """The primer's roll in the model's range, checked against the requested length."""
        path = self.cfg.generate.get("primer")
        steps = self.generate_steps()
        if not path:
            return None
        roll, outside = to_range(read_midi(path, self.state["steps_per_beat"]), self.state["low"], self.state["high"])
        if outside:
            log.warning("primer %s: dropped %d note-steps outside the model's pitch range", path, outside)
        if len(roll) > steps:
            raise UserError(f"primer {path} is {len(roll)} steps long, longer than the requested length of {steps} "
                            "steps (raise task.generate.length)")
        return torch.from_numpy(roll)

    def generate_steps(self) -> int:
        """`generate.length` in steps (its `unit` is steps, beats or seconds at `generate.tempo`)."""
        gen, spb = self.cfg.generate, self.state["steps_per_beat"]
        if gen.unit not in UNITS:
            raise UserError(f"task.generate.unit must be one of {list(UNITS)}, got {gen.unit!r}")
        beats = {"steps": gen.length / spb, "beats": gen.length, "seconds": gen.length * gen.tempo / 60}[gen.unit]
        steps = round(beats * spb)
        if steps < 1:
            raise UserError(f"task.generate.length={gen.length} {gen.unit} is less than one step")
        return steps

    def sampling(self) -> Sampling:
        gen = self.cfg.generate
        if gen.temperature <= 0:
            raise UserError(f"task.generate.temperature must be positive, got {gen.temperature}")
        if gen.top_k is not None and gen.top_k < 1:
            raise UserError(f"task.generate.top_k must be at least 1 (or null), got {gen.top_k}")
        if gen.top_p is not None and not 0 < gen.top_p <= 1:
            raise UserError(f"task.generate.top_p must be in (0, 1] (or null), got {gen.top_p}")
        return Sampling(float(gen.temperature), gen.top_k, gen.top_p)

    def build_model(self, backbone: BackboneFactory) -> MusicModel:
        model = self.cfg.model
        return MusicModel(backbone, self.state["high"] - self.state["low"] + 1, model.head, model.embed_size,
                          model.head_units, model.dropout)

    def step(self, model: MusicModel, batch: tuple[Tensor, Tensor], stage: Stage) -> StepOutput:
        roll, lengths = batch
        steps = int(lengths.sum())
        return StepOutput(model.nll(roll, lengths).sum() / steps, steps)

    def predict_step(self, model: MusicModel, batch: Tensor) -> dict[str, Tensor]:
        """Pieces `batch` (indices), sampled with a generator seeded by `generate.seed` and the first index."""
        generator = torch.Generator().manual_seed(int(self.cfg.generate.seed) * 1_000_003 + int(batch[0]))
        rolls = model.generate(len(batch), self.generate_steps(), self.sampling(), generator, self.primer)
        return {"index": batch.cpu(), "roll": rolls.bool().cpu()}

    def write_predictions(self, predictions: list[Any], datamodule: MusicData, out_dir: Path) -> list[Path]:
        gen, paths = self.cfg.generate, []
        for batch in predictions:
            for index, roll in zip(batch["index"].tolist(), batch["roll"].numpy()):
                paths += write_piece(roll, Path(out_dir) / f"piece_{index:03d}", self.state["low"],
                                     self.state["steps_per_beat"], gen.tempo, gen.program, gen.velocity)
        return paths


def _outside(roll: np.ndarray, low: int, high: int) -> np.ndarray:
    """Where `roll` (steps, 128) has notes outside `low..high`."""
    mask = roll.copy()
    mask[:, low:high + 1] = False
    return mask
