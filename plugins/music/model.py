"""The music networks: roll adapter, shared backbone and a note head (independent or autoregressive);
or, for the event representation, event embedding, shared backbone and a softmax over events.

Sampling controls of the roll heads, the same for both:

- `temperature` divides every note's logit (below 1: safer, above 1: wilder);
- `top_p` is nucleus sampling of each note's on/off decision: when the likelier outcome alone
  has probability `top_p` or more it is always drawn (so below 0.5 every note is decided by its likelier
  outcome), otherwise both stay possible;
- `top_k` caps polyphony at k notes: the independent head only lets its k likeliest
  pitches sound; the autoregressive head (low to high) keeps the rest off once k sound.

For events, they are the usual ones over the softmax: `temperature` divides the logits,
`top_k` keeps the k likeliest events, `top_p` the smallest set of likeliest events whose
probability reaches p (nucleus sampling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gru_suite.backbone import require_unidirectional, valid_mask
from gru_suite.config import check_choice, config_number
from gru_suite.errors import UserError
from gru_suite.task import BackboneFactory
from gru_suite_plugins.music.events import STEPS_PER_SECOND, TIME_SHIFT, VOCAB, shift_steps

HeadKind = Literal["independent", "autoregressive"]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


def _draw(prob: Tensor, sampling: Sampling, generator: torch.Generator) -> Tensor:
    """Bernoulli draws from `prob` after the nucleus cut, with uniforms from a CPU generator
    (the same seed gives the same notes on any device)."""
    if sampling.top_p is not None:  # the nucleus of {on, off}: the likelier outcome alone once it holds top_p
        prob = torch.where(torch.maximum(prob, 1 - prob) >= sampling.top_p, (prob >= 0.5).to(prob.dtype), prob)
    uniform = torch.rand(prob.shape, generator=generator).to(prob.device)
    return (uniform < prob).float()


class IndependentHead(nn.Module):
    """Each pitch sounds independently given the GRU output (Boulanger-Lewandowski 2012's baseline)."""

    def __init__(self, hidden: int, pitches: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, pitches)

    def nll(self, h: Tensor, notes: Tensor) -> Tensor:
        """Negative log-likelihood of each step's notes (..., P) -> (...)."""
        return F.binary_cross_entropy_with_logits(self.linear(h), notes, reduction="none").sum(-1)

    def sample(self, h: Tensor, sampling: Sampling, generator: torch.Generator) -> Tensor:
        prob = torch.sigmoid(self.linear(h) / sampling.temperature)
        if sampling.top_k is not None and sampling.top_k < prob.size(-1):
            keep = torch.zeros_like(prob).scatter_(-1, prob.topk(sampling.top_k, dim=-1).indices, 1.0)
            prob = prob * keep
        return _draw(prob, sampling, generator)


class AutoregressiveHead(nn.Module):
    """The joint distribution of a step's notes, p(y_i | h, y_<i) from low to high pitch.

    A MADE (masked one-hidden-layer MLP with direct masked connections) conditioned
    on the GRU output, as NADE is in the RNN-NADE: exact likelihood in one pass for
    training, one pass per pitch for sampling.
    """

    def __init__(self, hidden: int, pitches: int, units: int = 128) -> None:
        super().__init__()
        degree = torch.arange(units) % max(pitches - 1, 1)  # hidden unit k sees pitches 0..degree[k]
        pitch = torch.arange(pitches)
        self.register_buffer("mask_in", (pitch[None, :] <= degree[:, None]).float(), persistent=False)
        self.register_buffer("mask_out", (degree[None, :] < pitch[:, None]).float(), persistent=False)
        self.register_buffer("mask_direct", (pitch[None, :] < pitch[:, None]).float(), persistent=False)
        self.notes_in = nn.Linear(pitches, units, bias=False)
        self.context_in = nn.Linear(hidden, units)
        self.notes_out = nn.Linear(units, pitches, bias=False)
        self.direct = nn.Linear(pitches, pitches, bias=False)
        self.context_out = nn.Linear(hidden, pitches)

    def logits(self, h: Tensor, notes: Tensor) -> Tensor:
        """Logit of each pitch given `h` and the notes below it (the rest of `notes` is ignored)."""
        return self._logits(notes, *self._given(h))

    def _given(self, h: Tensor) -> tuple[Tensor, ...]:
        """What the logits of one `h` share whatever the notes: the masked weights and the context terms."""
        return (self.notes_in.weight * self.mask_in, self.context_in(h), self.notes_out.weight * self.mask_out,
                self.direct.weight * self.mask_direct, self.context_out(h))

    @staticmethod
    def _logits(notes: Tensor, weights_in: Tensor, context_in: Tensor, weights_out: Tensor, weights_direct: Tensor,
                context_out: Tensor) -> Tensor:
        hidden = torch.relu(F.linear(notes, weights_in) + context_in)
        return F.linear(hidden, weights_out) + F.linear(notes, weights_direct) + context_out

    def nll(self, h: Tensor, notes: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(h, notes), notes, reduction="none").sum(-1)

    def sample(self, h: Tensor, sampling: Sampling, generator: torch.Generator) -> Tensor:
        """Notes (0/1) of one time step drawn pitch by pitch from the lowest, each given `h` and the notes drawn
        below it."""
        notes = torch.zeros(*h.shape[:-1], self.direct.in_features, device=h.device)
        given = self._given(h)  # once per step, not once per pitch
        for i in range(notes.size(-1)):
            prob = torch.sigmoid(self._logits(notes, *given)[..., i] / sampling.temperature)
            if sampling.top_k is not None:
                prob = torch.where(notes.sum(-1) >= sampling.top_k, 0.0, prob)
            notes[..., i] = _draw(prob, sampling, generator)
        return notes


class MusicModel(nn.Module):
    """Predicts each step's notes from the steps before: previous notes (B, T, P) -> Linear
    adapter -> backbone -> note head. Step 0 is predicted from an all-silent step.

    `input_dropout` drops adapter features before the backbone; `input_skip` also feeds the
    previous step's notes straight to the head beside the backbone output (Graves 2013's
    skip connection), so holding a note needs no detour through the GRU state.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        pitches: int,
        head: HeadKind = "independent",
        embed_size: int = 64,
        head_units: int = 128,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        input_skip: bool = False,
    ) -> None:
        super().__init__()
        check_choice(head, get_args(HeadKind), "task.model.head")
        for field, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= config_number(p, f"task.model.{field}") < 1.0:
                raise UserError(f"task.model.{field} must be in [0, 1), got {p!r}")
        self.pitches = pitches
        self.adapter = nn.Linear(pitches, embed_size)
        self.backbone = require_unidirectional(backbone(input_size=embed_size), "task=music")
        self.dropout = nn.Dropout(dropout)
        self.input_dropout = nn.Dropout(input_dropout)
        self.input_skip = input_skip
        size = self.backbone.output_size + (pitches if input_skip else 0)
        self.head: IndependentHead | AutoregressiveHead = (
            IndependentHead(size, pitches) if head == "independent" else AutoregressiveHead(size, pitches, head_units)
        )

    def hidden(self, roll: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The head's input that predicts each step of `roll` (B, T, P) -> (B, T, H)."""
        previous = F.pad(roll[:, :-1], (0, 0, 1, 0))
        out, _ = self.backbone(self.input_dropout(self.adapter(previous)), lengths)
        return self._head_input(out, previous)

    def _head_input(self, out: Tensor, previous: Tensor) -> Tensor:
        out = self.dropout(out)
        return torch.cat([out, previous], -1) if self.input_skip else out

    def nll(self, roll: Tensor, lengths: Tensor) -> Tensor:
        """Negative log-likelihood (nats) of each step (B, T); zero past each piece's length."""
        nll = self.head.nll(self.hidden(roll, lengths), roll)
        return nll * valid_mask(lengths.to(roll.device), roll.size(1))

    @torch.no_grad()
    def generate(
        self,
        pieces: int,
        steps: int,
        sampling: Sampling,
        generator: torch.Generator,
        primer: Tensor | None = None,
    ) -> Tensor:
        """Sample `pieces` rolls of `steps` steps (B, steps, P), continuing `primer` (T0, P) if given.

        The primer is read in one pass; after it, each step feeds the sampled notes to
        `backbone.step` with the carried state, so a step costs the same at any length.
        """
        device = self.adapter.weight.device
        silence = torch.zeros(pieces, 1, self.pitches, device=device)
        prefix = primer.to(device).float().expand(pieces, -1, -1) if primer is not None else silence[:, :0]
        inputs = torch.cat([silence, prefix], 1)
        out, state = self.backbone(self.adapter(inputs))
        head_input = self._head_input(out[:, -1], inputs[:, -1])
        rolls = list(prefix.unbind(1))
        while len(rolls) < steps:
            notes = self.head.sample(head_input, sampling, generator)
            rolls.append(notes)
            if len(rolls) < steps:
                out, state = self.backbone.step(self.adapter(notes), state)
                head_input = self._head_input(out, notes)
        return torch.stack(rolls, 1)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """`logits` (..., V) with the events outside the top k and outside the nucleus of mass `top_p` at -inf
    (transformers' top-k and top-p logits warpers)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rows = logits.reshape(-1, logits.size(-1))
    if top_k is not None and top_k < logits.size(-1):
        rows = TopKLogitsWarper(top_k)(None, rows)
    if top_p is not None and top_p < 1:
        rows = TopPLogitsWarper(top_p)(None, rows)
    return rows.view(logits.shape)


def sample_events(logits: Tensor, sampling: Sampling, generator: torch.Generator) -> Tensor:
    """One event per row of `logits` (B, V), drawn on the CPU with `generator` (same seed, same events)."""
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    prob = logits.float().softmax(-1).cpu()
    return torch.multinomial(prob, 1, generator=generator).squeeze(-1)


class EventModel(nn.Module):
    """Predicts each event from the events before (Performance RNN): event embedding -> backbone ->
    linear softmax over the `vocab` events. Event 0 is predicted from a start token (index `vocab`)."""

    def __init__(self, backbone: BackboneFactory, vocab: int = VOCAB, embed_size: int = 64, dropout: float = 0.0):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab + 1, embed_size)
        self.backbone = require_unidirectional(backbone(input_size=embed_size), "task=music")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.output_size, vocab)

    def hidden(self, events: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The backbone output that predicts each event of `events` (B, T) -> (B, T, H)."""
        previous = F.pad(events[:, :-1], (1, 0), value=self.vocab)
        out, _ = self.backbone(self.embed(previous), lengths)
        return self.dropout(out)

    def nll(self, events: Tensor, lengths: Tensor) -> Tensor:
        """Negative log-likelihood (nats) of each event (B, T); zero past each piece's length."""
        logits = self.head(self.hidden(events, lengths))
        nll = F.cross_entropy(logits.transpose(1, 2), events, reduction="none")
        return nll * valid_mask(lengths.to(events.device), events.size(1))

    @torch.no_grad()
    def generate(
        self,
        pieces: int,
        sampling: Sampling,
        generator: torch.Generator,
        primer: Sequence[int] = (),
        max_events: int = 1000,
        seconds: float | None = None,
    ) -> list[list[int]]:
        """Sample `pieces` event sequences continuing `primer`: `max_events` events in all (primer
        included), or fewer where the time shifts reach `seconds` first (the last shift is cut to
        end there exactly).

        The start token and the primer are read in one pass; after them each event is fed to
        `backbone.step` with the carried state, so an event costs the same at any length.
        """
        device = self.head.weight.device
        prefix = torch.tensor([self.vocab, *primer], device=device).expand(pieces, -1)
        out, state = self.backbone(self.embed(prefix))
        out = out[:, -1]
        target = None if seconds is None else round(seconds * STEPS_PER_SECOND)
        elapsed = [sum(map(shift_steps, primer))] * pieces
        sequences = [list(primer) for _ in range(pieces)]

        def finished(b: int) -> bool:
            return len(sequences[b]) >= max_events or (target is not None and elapsed[b] >= target)

        while not all(map(finished, range(pieces))):
            events = sample_events(self.head(out), sampling, generator)
            for b in range(pieces):
                if finished(b):
                    continue
                shift = shift_steps(int(events[b]))
                if target is not None and elapsed[b] + shift > target:
                    shift = target - elapsed[b]
                    events[b] = TIME_SHIFT + shift - 1
                elapsed[b] += shift
                sequences[b].append(int(events[b]))
            if not all(map(finished, range(pieces))):
                out, state = self.backbone.step(self.embed(events.to(device)), state)
        return sequences
