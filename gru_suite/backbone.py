"""The shared recurrent backbone: a stacked, optionally bidirectional GRU (or LSTM)."""

from __future__ import annotations

from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from gru_suite.config import config_number
from gru_suite.errors import UserError

State = Union[Tensor, tuple[Tensor, Tensor]]
"""GRU state `h` (layers*dirs, B, H); LSTM state `(h, c)` of the same shape."""

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class GRUBackbone(nn.Module):
    """Stacked recurrent encoder over the fused `nn.GRU` (cuDNN on GPU).

    `forward(x, lengths, h0)` runs whole batch-first sequences, packing them when
    `lengths` is given; `step(x_t, h)` advances one time step for streaming and
    generation and gives the same outputs as `forward`. `cell="lstm"` swaps in
    `nn.LSTM` behind the same interface. `weight_dropout` drops hidden-to-hidden
    weights while training (DropConnect, as AWD-LSTM does: one mask per batch,
    shared over time steps), still through the fused kernel.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        cell: Literal["gru", "lstm"] = "gru",
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in _CELLS:
            raise UserError(f"backbone.cell must be one of {sorted(_CELLS)}, got {cell!r}")
        self.weight_dropout = config_number(weight_dropout, "backbone.weight_dropout")
        if not 0.0 <= self.weight_dropout < 1.0:
            raise UserError(f"backbone.weight_dropout must be in [0, 1), got {weight_dropout!r}")
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.rnn = _CELLS[cell](
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )

    @property
    def input_size(self) -> int:
        return self.rnn.input_size

    @property
    def output_size(self) -> int:
        """Features per time step of `forward`'s output."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, h0: State | None = None
    ) -> tuple[Tensor, State]:
        """Encode `x` (B, T, input_size); padded steps past `lengths` output zeros.

        Returns the outputs (B, T, output_size) and the final state, which for
        packed input is taken at each sequence's own last step.
        """
        return self._encode(x, lengths, h0)

    def first_layer(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Outputs (B, T, output_size) of the first layer alone, run with the stack's own first-layer weights
        through the fused kernel. Each direction's states here have seen only their own side of the sequence,
        which a bidirectional stack's upper layers have not, so a language model can learn on them."""
        if self.num_layers == 1:
            return self._encode(x, lengths, None)[0]
        layer = _CELLS[self.cell](self.input_size, self.hidden_size, batch_first=True,
                                  bidirectional=self.bidirectional, device="meta")
        return self._encode(x, lengths, None, layer)[0]

    def _encode(
        self, x: Tensor, lengths: Tensor | None, h0: State | None, layer: nn.RNNBase | None = None
    ) -> tuple[Tensor, State]:
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, time, {self.input_size}), got shape {tuple(x.shape)}")
        if lengths is None:
            return self._run(x, h0, layer)
        lengths = torch.as_tensor(lengths).cpu()  # one copy from the device, for packing and the checks below
        if lengths.shape != (x.size(0),) or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be whole numbers, one per sequence of x ({x.size(0)}), got "
                             f"{str(lengths.dtype).removeprefix('torch.')} of shape {tuple(lengths.shape)}")
        low, high = (int(bound) for bound in torch.aminmax(lengths)) if len(lengths) else (0, 0)
        if low < 0 or high > x.size(1):
            raise ValueError(f"lengths must be within 0..{x.size(1)} (the time steps of x), got {low}..{high}")
        packed = pack_padded_sequence(x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
        out, h_n = self._run(packed, h0, layer)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        if (lengths == 0).any():  # packing refuses them: run one step, then give them zeros and their h0
            empty = (lengths == 0).to(out.device)
            out = out.masked_fill(empty[:, None, None], 0.0)
            h_n = _with_state(h_n, empty, h0)
        return out, h_n

    def _run(self, x: Tensor | PackedSequence, h0: State | None, layer: nn.RNNBase | None) -> tuple[Any, State]:
        """`self.rnn` on `x`, or `layer` (a shape template on the meta device) with `self.rnn`'s weights of
        the same names; hidden-to-hidden weights dropped in training when `weight_dropout` is set."""
        dropping = self.training and self.weight_dropout
        if layer is None and not dropping:
            return self.rnn(x, h0)
        module = self.rnn if layer is None else layer
        weights = {name: getattr(self.rnn, name) for name, _ in module.named_parameters()}
        if dropping:
            weights = {name: F.dropout(weight, self.weight_dropout) if name.startswith("weight_hh") else weight
                       for name, weight in weights.items()}
        return torch.func.functional_call(module, weights, (x, h0))

    def step(self, x_t: Tensor, h: State | None = None) -> tuple[Tensor, State]:
        """Advance one step: `x_t` (B, input_size) -> output (B, output_size), new state.

        Only unidirectional backbones can stream; a bidirectional one needs the
        whole sequence. No hidden-to-hidden weights are dropped here (`weight_dropout` acts in `forward`).
        """
        if self.bidirectional:
            raise RuntimeError("step() needs a unidirectional backbone; bidirectional=True sees the future")
        if x_t.dim() != 2 or x_t.size(1) != self.input_size:
            raise ValueError(f"step() takes x_t of shape (batch, {self.input_size}), got {tuple(x_t.shape)}")
        out, h = self.rnn(x_t.unsqueeze(1), h)
        return out.squeeze(1), h

    def last_hidden(self, h_n: State) -> Tensor:
        """Top layer's final hidden state (B, output_size), both directions joined."""
        h = h_n[0] if isinstance(h_n, tuple) else h_n
        if self.bidirectional:
            return torch.cat([h[-2], h[-1]], dim=-1)
        return h[-1]


def _with_state(h_n: State, rows: Tensor, h0: State | None) -> State:
    """`h_n` with the batch `rows` set back to their initial state (`h0`, else zeros): items of length 0."""
    if isinstance(h_n, tuple):
        return tuple(_with_state(h, rows, None if h0 is None else start) for h, start in zip(h_n, h0 or (None,) * 2))
    start = torch.zeros_like(h_n) if h0 is None else h0
    return torch.where(rows[None, :, None], start, h_n)


def valid_mask(lengths: Tensor, steps: int) -> Tensor:
    """(B, `steps`) True at each padded sequence's real steps (those before its length), on `lengths`' device."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def require_unidirectional(backbone: GRUBackbone, model: str) -> GRUBackbone:
    """`backbone`, if it reads one way: a model that predicts each step from the steps before it (`model`
    names it in the error) must not see the steps it predicts, as a backward direction would."""
    if backbone.bidirectional:
        raise UserError(f"{model} needs backbone.bidirectional=false: it predicts each step from the steps before "
                        "it, and a backward direction would show it the steps it predicts")
    return backbone
