"""The encoder-decoder: a bidirectional GRU encoder, an attention GRU decoder, tied embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from gru_suite.backbone import GRUBackbone, State, valid_mask
from gru_suite.config import check_choice
from gru_suite.task import BackboneFactory
from gru_suite.text import PAD_ID

AttentionKind = Literal["luong", "bahdanau"]


def select_state(state: State, index: Tensor) -> State:
    """Rows `index` of a recurrent state (batch is dimension 1), for beam reordering."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index)


@dataclass
class Memory:
    """The encoded source: outputs (B, S, 2H), attention keys, padding mask (B, S) and final state."""

    outputs: Tensor
    keys: Tensor
    mask: Tensor
    final: State

    def select(self, index: Tensor) -> Memory:
        """Rows `index` (to expand a batch into beams)."""
        return Memory(self.outputs[index], self.keys[index], self.mask[index], select_state(self.final, index))


class Attention(nn.Module):
    """Scores of decoder outputs against the source: Luong's `general` (h W m) or Bahdanau's additive
    (v tanh(W m + U h)). Padded source positions get zero weight."""

    def __init__(self, kind: AttentionKind, query_size: int, memory_size: int) -> None:
        super().__init__()
        check_choice(kind, get_args(AttentionKind), "task.model.attention")
        self.kind = kind
        self.key = nn.Linear(memory_size, query_size, bias=kind == "bahdanau")
        if kind == "bahdanau":
            self.query = nn.Linear(query_size, query_size, bias=False)
            self.energy = nn.Linear(query_size, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """What the scores compare against, computed once per source."""
        return self.key(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Context vectors (B, T, memory) and weights (B, T, S) for queries (B, T, H)."""
        if self.kind == "luong":
            scores = query @ keys.transpose(1, 2)
        else:
            scores = self.energy(torch.tanh(self.query(query).unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)
        weights = scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)
        return weights @ memory, weights


class Seq2Seq(nn.Module):
    """Bidirectional GRU encoder and GRU decoder with attention over the encoder outputs.

    Each decoder output `h_t` attends to the source; the attentional vector
    `tanh(W [context; h_t])` (embedding-sized) predicts the next token, through the
    target embedding matrix when `tie_embeddings`. In training the decoder GRU runs
    fused over the whole target (teacher forcing) and attention follows for all
    steps at once; decoding carries the decoder state from step to step.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        source_vocab: int,
        target_vocab: int,
        embed_size: int,
        attention: AttentionKind = "luong",
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        share_embeddings: bool = False,
        bidirectional_encoder: bool = True,
    ) -> None:
        super().__init__()
        self.source_embed = nn.Embedding(source_vocab, embed_size, padding_idx=PAD_ID)
        self.target_embed = (
            self.source_embed if share_embeddings else nn.Embedding(target_vocab, embed_size, padding_idx=PAD_ID)
        )
        self.encoder: GRUBackbone = backbone(input_size=embed_size, bidirectional=bidirectional_encoder)
        self.decoder: GRUBackbone = backbone(input_size=embed_size, bidirectional=False)
        hidden = self.decoder.hidden_size
        self.bridge = nn.Linear(self.encoder.output_size, hidden)
        self.attention = Attention(attention, hidden, self.encoder.output_size)
        self.combine = nn.Linear(self.encoder.output_size + hidden, embed_size)
        self.out = nn.Linear(embed_size, target_vocab)
        if tie_embeddings:
            self.out.weight = self.target_embed.weight
        self.dropout = nn.Dropout(dropout)

    @property
    def backbone(self) -> GRUBackbone:
        """The encoder, the backbone that `gru-suite-gates` traces (it reads the source sentence)."""
        return self.encoder

    def encode(self, source: Tensor, lengths: Tensor) -> Memory:
        """Encode padded source ids (B, S) with their lengths."""
        outputs, final = self.encoder(self.dropout(self.source_embed(source)), lengths)
        mask = valid_mask(lengths.to(source.device), source.size(1))
        return Memory(outputs, self.attention.keys(outputs), mask, final)

    def initial_state(self, memory: Memory) -> State:
        """The decoder's first state: tanh of a projection of the encoder's final state, in every layer."""
        h = torch.tanh(self.bridge(self.encoder.last_hidden(memory.final)))
        h = h.unsqueeze(0).repeat(self.decoder.num_layers, 1, 1)
        return (h, torch.zeros_like(h)) if self.decoder.cell == "lstm" else h

    def _predict(self, decoded: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """Logits and attention weights for decoder outputs (B, T, H)."""
        context, weights = self.attention(decoded, memory.keys, memory.outputs, memory.mask)
        attentional = torch.tanh(self.combine(torch.cat([context, decoded], -1)))
        return self.out(self.dropout(attentional)), weights

    def forward(self, source: Tensor, source_lengths: Tensor, target_in: Tensor, target_lengths: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for target inputs (BOS + tokens)."""
        memory = self.encode(source, source_lengths)
        state = self.initial_state(memory)
        decoded, _ = self.decoder(self.dropout(self.target_embed(target_in)), target_lengths, state)
        return self._predict(decoded, memory)[0]

    def decode_step(self, tokens: Tensor, state: State, memory: Memory) -> tuple[Tensor, State, Tensor]:
        """One decoding step from the previous tokens (B,) and the carried state:
        logits (B, V), the new state and the attention weights (B, S)."""
        decoded, state = self.decoder.step(self.dropout(self.target_embed(tokens)), state)
        logits, weights = self._predict(decoded.unsqueeze(1), memory)
        return logits.squeeze(1), state, weights.squeeze(1)
