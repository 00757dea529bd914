"""Greedy and batched beam-search decoding that carry the decoder state from step to step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gru_suite.text import BOS_ID as BOS
from gru_suite.text import EOS_ID as EOS
from gru_suite_plugins.translation.model import Seq2Seq, select_state


@dataclass
class Hypothesis:
    """A decoded sentence: token ids (no BOS/EOS), its attention (tokens, source length) and score.

    `score` is the summed log-probability (EOS included when emitted), divided by
    `length ** length_penalty` in beam search; `ended` is False for one stopped at its length limit before EOS.
    """

    tokens: list[int]
    attention: Tensor
    score: float
    ended: bool = True


def max_lengths(source_lengths: Tensor, ratio: float, extra: int, cap: int) -> Tensor:
    """Most tokens to emit per sentence: `ratio * source length + extra`, at most `cap`."""
    return (source_lengths.float() * ratio + extra).long().clamp(1, cap)


@torch.no_grad()
def greedy(model: Seq2Seq, source: Tensor, lengths: Tensor, max_len: Tensor) -> list[Hypothesis]:
    """The most likely next token at each step, until EOS or `max_len` (B,) tokens."""
    memory = model.encode(source, lengths)
    state = model.initial_state(memory)
    batch = source.size(0)
    tokens = source.new_full((batch,), BOS)
    out: list[list[int]] = [[] for _ in range(batch)]
    attention: list[Tensor] = []  # each step's (B, source length): a sentence's tokens are its first steps
    scores = [0.0] * batch
    ended = [False] * batch
    active = set(range(batch))
    limits = list(zip(lengths.tolist(), max_len.tolist()))
    for t in range(int(max_len.max())):
        logits, state, weights = model.decode_step(tokens, state, memory)
        attention.append(weights)
        logp, tokens = logits.log_softmax(-1).max(-1)
        step_logp, step_tokens = logp.tolist(), tokens.tolist()
        for b in sorted(active):
            scores[b] += step_logp[b]
            if step_tokens[b] == EOS:
                ended[b] = True
                active.discard(b)
                continue
            out[b].append(step_tokens[b])
            if t + 1 >= limits[b][1]:
                active.discard(b)
        if not active:
            break
    steps = torch.stack(attention, 1)  # (B, steps, source length)
    return [Hypothesis(o, steps[b, : len(o), :n], s, e)
            for b, (o, n, s, e) in enumerate(zip(out, lengths.tolist(), scores, ended))]


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    source: Tensor,
    lengths: Tensor,
    max_len: Tensor,
    beam: int,
    length_penalty: float = 1.0,
    early_stopping: bool = True,
) -> list[Hypothesis]:
    """Batched beam search: the batch runs as B x `beam` rows, reordered by back-pointers each step.

    At each step the best 2 x `beam` extensions of a sentence's beams are ranked;
    those among the first `beam` that end in EOS are finished (so `beam=1` is
    exactly greedy), the best `beam` others continue. A sentence stops when it has
    `beam` finished hypotheses (`early_stopping`), or, without early stopping,
    when no live beam can beat the worst of them any more; at `max_len` its live
    beams are finished as they are. The best by `score / length ** length_penalty`
    wins (length counts EOS).
    """
    batch, k = source.size(0), beam
    rows = torch.arange(batch, device=source.device).repeat_interleave(k)
    memory = model.encode(source, lengths).select(rows)
    state = model.initial_state(memory)
    tokens = source.new_full((batch * k,), BOS)
    scores = torch.full((batch, k), float("-inf"), device=source.device)
    scores[:, 0] = 0.0  # all beams start as the same empty hypothesis
    lineage = _Lineage()
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    limits = list(zip(lengths.tolist(), max_len.tolist()))
    for t in range(int(max_len.max())):
        logits, state, weights = model.decode_step(tokens, state, memory)
        vocab = logits.size(-1)
        candidates = (scores.unsqueeze(-1) + logits.log_softmax(-1).view(batch, k, vocab)).view(batch, -1)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)
        origin, word = top_ids // vocab, top_ids % vocab
        steps = t + 1
        ranked = zip(top_scores[:, :k].tolist(), word[:, :k].tolist(), origin[:, :k].tolist())
        for b, (b_scores, b_words, b_origins) in enumerate(ranked):
            if done[b]:
                continue
            last = steps >= limits[b][1]
            for score, token, beam_of in zip(b_scores, b_words, b_origins):
                is_eos = token == EOS
                if score == float("-inf") or not (is_eos or last):
                    continue
                ids, rows_attention = lineage.trace(b * k + beam_of, weights, None if is_eos else token)
                finished[b].append(Hypothesis(ids, rows_attention[:, : limits[b][0]], score / steps**length_penalty,
                                              is_eos))
            finished[b] = sorted(finished[b], key=lambda h: -h.score)[:k]
            if last or _complete(finished[b], k, early_stopping, top_scores[b], word[b], steps, limits[b][1],
                                 length_penalty):
                done[b] = True
        if all(done):
            break
        live = top_scores.masked_fill(word == EOS, float("-inf"))
        live[torch.tensor(done, device=live.device)] = float("-inf")
        scores, pick = live.topk(k, dim=1)
        beams = (torch.arange(batch, device=source.device).unsqueeze(1) * k + origin.gather(1, pick)).view(-1)
        tokens = word.gather(1, pick).view(-1)
        state = select_state(state, beams)
        lineage.add(beams, tokens, weights)
    return [max(f, key=lambda h: h.score) for f in finished]


class _Lineage:
    """Where each beam row came from, step by step (back-pointers, tokens and attention), so that a finished
    hypothesis is traced back on its own, where copying every row's history at each step costs ever more."""

    def __init__(self) -> None:
        self.origins: list[list[int]] = []  # per step: each row's row at the step before
        self.tokens: list[list[int]] = []  # per step: each row's token
        self.weights: list[Tensor] = []  # per step: attention (rows before that step's reordering, source length)

    def add(self, origins: Tensor, tokens: Tensor, weights: Tensor) -> None:
        self.origins.append(origins.tolist())
        self.tokens.append(tokens.tolist())
        self.weights.append(weights)

    def trace(self, row: int, weights: Tensor, token: int | None) -> tuple[list[int], Tensor]:
        """Row `row`'s tokens and attention (tokens, source length) so far, plus this step's `token` and its `weights`
        row where a token is added (None: EOS, which neither adds)."""
        ids: list[int] = [] if token is None else [token]
        rows: list[Tensor] = [] if token is None else [weights[row]]
        for origins, tokens, step_weights in zip(reversed(self.origins), reversed(self.tokens), reversed(self.weights)):
            ids.append(tokens[row])
            row = origins[row]
            rows.append(step_weights[row])
        return ids[::-1], torch.stack(rows[::-1]) if rows else weights.new_zeros((0, weights.size(1)))


def _complete(
    finished: list[Hypothesis], k: int, early_stopping: bool, top_scores: Tensor, words: Tensor, steps: int,
    max_len: int, length_penalty: float,
) -> bool:
    """Whether a sentence with `finished` hypotheses needs no more steps: with `early_stopping` once it has `k`,
    else once the best live beam cannot beat the worst of them at any length up to `max_len` (its log-probability
    only falls, but with `length_penalty` > 0 a longer hypothesis is divided by more)."""
    if len(finished) < k:
        return False
    if early_stopping:
        return True
    live = top_scores.masked_fill(words == EOS, float("-inf")).max()
    best_length = max_len if length_penalty > 0 else steps
    return float(live) / best_length**length_penalty <= finished[-1].score

