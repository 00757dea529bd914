"""Gate introspection: replay a GRU backbone step by step and plot its gates.

`trace_gates` re-runs the backbone's own `nn.GRU` weights through an explicit
cell in a Python loop over time, exposing the update gate z, the reset gate r,
the candidate state n and the hidden state h that the fused kernel hides.
`plot_gates` draws them as heat maps, one PNG per layer.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from gru_suite.atomic import save_figure
from gru_suite.backbone import GRUBackbone
from gru_suite.errors import UserError
from gru_suite.task import SequenceView, task_datamodule

if TYPE_CHECKING:
    from gru_suite.module import TaskModule

_Gates = tuple[Tensor, ...]
"""One direction's (z, r, n, h), each (B, T, H), in time order."""


@dataclass
class GateTrace:
    """One layer's gate activations, each (B, T, H * directions).

    A bidirectional layer joins forward and backward units on the last dim,
    forward first, in time order: the layout of `nn.GRU`'s output.
    """

    layer: int
    update: Tensor
    reset: Tensor
    candidate: Tensor
    hidden: Tensor
    directions: int = 1

    def final_hidden(self) -> Tensor:
        """Final state (directions, B, H), laid out like this layer's slice of `h_n`."""
        forward, *backward = self.hidden.chunk(self.directions, dim=-1)
        return torch.stack([forward[:, -1], *(h[:, 0] for h in backward)])


def _trace_direction(rnn: nn.GRU, suffix: str, x: Tensor, h: Tensor) -> _Gates:
    """Run one layer-direction over `x` (B, T, in) from `h` (B, H); PyTorch gate order r, z, n."""
    w_ih, w_hh = getattr(rnn, f"weight_ih_{suffix}"), getattr(rnn, f"weight_hh_{suffix}")
    b_ih, b_hh = getattr(rnn, f"bias_ih_{suffix}"), getattr(rnn, f"bias_hh_{suffix}")
    gi = F.linear(x, w_ih, b_ih)
    steps = []
    for t in range(x.size(1)):
        i_r, i_z, i_n = gi[:, t].chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        steps.append((z, r, n, h))
    return tuple(torch.stack(gate, dim=1) for gate in zip(*steps))


def _trace_layer(rnn: nn.GRU, layer: int, x: Tensor, h0: Tensor) -> GateTrace:
    """Trace both directions of `layer`; `h0` is (directions, B, H)."""
    parts = [_trace_direction(rnn, f"l{layer}", x, h0[0])]
    if rnn.bidirectional:
        backward = _trace_direction(rnn, f"l{layer}_reverse", x.flip(1), h0[1])
        parts.append(tuple(g.flip(1) for g in backward))
    z, r, n, h = (torch.cat(gate, dim=-1) for gate in zip(*parts))
    return GateTrace(layer=layer, update=z, reset=r, candidate=n, hidden=h, directions=len(parts))


def trace_gates(backbone: GRUBackbone, x: Tensor, h0: Tensor | None = None) -> list[GateTrace]:
    """Replay `backbone` on `x` (B, T, input_size) and record every layer's gates.

    `h0` is `nn.GRU`'s initial state (layers * directions, B, H), zeros if None.
    Sequences must be unpadded (no `lengths`); dropout between layers is
    skipped, as in eval mode. The last layer's `hidden` equals `backbone(x)[0]`.
    """
    if backbone.cell != "gru":
        raise UserError(f"gate traces need a GRU backbone; this model's cell is {backbone.cell!r}")
    rnn = backbone.rnn
    if x.dim() != 3 or x.size(1) < 1 or x.size(2) != rnn.input_size:
        raise ValueError(f"x must have shape (batch, time >= 1, {rnn.input_size}), got {tuple(x.shape)}")
    dirs = 2 if rnn.bidirectional else 1
    shape = (rnn.num_layers * dirs, x.size(0), rnn.hidden_size)
    x = x.to(rnn.weight_ih_l0.dtype)  # float64 input to a float32 model, say: traced in the model's precision
    if h0 is None:
        h0 = x.new_zeros(shape)
    elif not isinstance(h0, Tensor) or tuple(h0.shape) != shape:
        raise ValueError(f"h0 must be a tensor of shape {shape}, got "
                         f"{tuple(h0.shape) if isinstance(h0, Tensor) else type(h0).__name__}")
    h0 = h0.to(x.dtype)
    traces = []
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            traces.append(_trace_layer(rnn, layer, x, h0[layer * dirs : (layer + 1) * dirs]))
            x = traces[-1].hidden
    return traces


_PANELS = (
    ("update", "update gate z", "viridis", 0.0),
    ("reset", "reset gate r", "viridis", 0.0),
    ("candidate", "candidate state (current memory content)", "RdBu_r", -1.0),
    ("hidden", "hidden state (final memory)", "RdBu_r", -1.0),
)
"""(GateTrace field, panel title, colormap, colour floor); every panel tops out at 1."""

_MAX_STEP_LABELS = 60
"""At most this many time-step labels on the axis; a longer sequence labels every k-th step."""


def _label_steps(ax: Axes, steps: Sequence[str]) -> None:
    """Label the time axis with `steps` (tokens, say), thinned to at most `_MAX_STEP_LABELS`."""
    every = math.ceil(len(steps) / _MAX_STEP_LABELS)
    shown = range(0, len(steps), every)
    ax.set_xticks(list(shown), [steps[t] for t in shown], rotation=90, fontsize=8 if len(shown) > 30 else 10,
                  parse_math=False)  # a "$" in a token is a dollar sign, not mathtext
    ax.set_xlabel("time step" if every == 1 else f"time step (one in {every} labelled)")


def _layer_figure(trace: GateTrace, sample: int, view: SequenceView) -> Figure:
    """Four stacked heat maps (units x time) of one layer for batch item `sample`, titled and labelled by `view`."""
    steps = trace.update.size(1)
    if view.steps is not None and len(view.steps) != steps:
        raise ValueError(f"{len(view.steps)} time-step labels for a sequence of {steps} steps")
    fig = Figure(figsize=(10, 11), layout="constrained")
    axes = fig.subplots(len(_PANELS), 1, sharex=True)
    for ax, (field, title, cmap, vmin) in zip(axes, _PANELS):
        values = getattr(trace, field)[sample].float().cpu().numpy().T
        image = ax.imshow(
            values, aspect="auto", origin="lower", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=1.0
        )
        fig.colorbar(image, ax=ax)
        ax.set_title(title)
        ax.set_ylabel("unit")
        if trace.directions == 2:  # forward units below the line, backward ones above
            ax.axhline(values.shape[0] / 2 - 0.5, color="black", linewidth=1)
            ax.set_ylabel("unit (forward | backward)")
    if view.steps is None:
        axes[-1].set_xlabel("time step")
    else:
        _label_steps(axes[-1], view.steps)
    title = textwrap.shorten(view.title, 100, placeholder=" ...")
    fig.suptitle(f"GRU gates: layer {trace.layer}, {title}", parse_math=False)  # user text: "$5 and $10" stays
    return fig


def plot_gates(
    trace: list[GateTrace], out_dir: Path, sample: int = 0, prefix: str = "gates", view: SequenceView | None = None
) -> list[Path]:
    """Write one heat-map PNG per layer of batch item `sample`, `{prefix}_layer{k}.png` in `out_dir`, titled and
    labelled by `view` (default: "sample {sample}" over numbered steps); return the paths."""
    batch = trace[0].update.size(0) if trace else 0
    if not 0 <= sample < batch:
        raise ValueError(f"sample must be a batch item, 0..{batch - 1}, got {sample}")
    view = view or SequenceView(f"sample {sample}")
    return [
        save_figure(_layer_figure(layer, sample, view), Path(out_dir) / f"{prefix}_layer{layer.layer}.png")
        for layer in trace
    ]


@dataclass
class _RNNCall:
    """One call of a backbone's `nn.GRU`: its input, the state given and the state returned (None where it cannot
    continue a stream: packed, bidirectional, or learning), and which weights ran it (the module and its
    parameters' versions, which in-place updates raise)."""

    x: Tensor | None
    h0: Tensor | None
    h_n: Tensor | None
    weights: tuple[int, ...]


class BackboneInput(NamedTuple):
    """What a backbone read: sequences (B, T, input_size), their `lengths` (None where the batch is not padded), and
    the state it started from (`nn.GRU`'s, (layers * directions, B, H); None: zeros)."""

    x: Tensor
    lengths: Tensor | None
    h0: Tensor | None


def capture_backbone_input(model: nn.Module, run: Callable[[], object]) -> BackboneInput:
    """The input that `model.backbone` first receives while `run()` executes (through `forward`, or `step` for a
    model that only streams). Where the calls after it carry its state on (a unidirectional GRU's generation,
    `step` after step, or a stream read chunk by chunk) with the same weights, their inputs follow on the time
    axis: the whole sequence the backbone read from that first state. Where none does, and the weights stay the same,
    the later calls from no state with inputs of the first's shape follow on the batch axis (a batch read in parts: a
    long series' windows), so that a sequence number counts through all of them."""
    if not isinstance(getattr(model, "backbone", None), GRUBackbone):
        raise UserError(f"{type(model).__name__} has no `backbone` attribute holding its GRUBackbone, which the gate "
                        "plots trace (the task's build_model() must set one)")
    captured: list[tuple[BackboneInput, bool]] = []  # each forward call's input, and whether it was learning
    calls: list[_RNNCall] = []

    def record(_: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["x"]
        lengths = args[1] if len(args) > 1 else kwargs.get("lengths")
        h0 = args[2] if len(args) > 2 else kwargs.get("h0")
        read = BackboneInput(x.detach(), None if lengths is None else torch.as_tensor(lengths).cpu(),
                             h0.detach() if isinstance(h0, Tensor) else h0)
        captured.append((read, torch.is_grad_enabled()))

    def record_rnn(rnn: nn.Module, args: tuple, output: tuple[Tensor, Tensor]) -> None:
        weights = (id(rnn), *(p._version for p in rnn.parameters()))
        x, h0 = args[0], args[1] if len(args) > 1 else None
        if torch.is_grad_enabled() or rnn.bidirectional or not isinstance(x, Tensor):  # learning (a fine-tune
            calls.append(_RNNCall(None, None, None, weights))  # between chunks), both directions, or packed
        else:
            calls.append(_RNNCall(x.detach(), h0, output[1], weights))

    handles = [model.backbone.register_forward_pre_hook(record, with_kwargs=True),
               model.backbone.rnn.register_forward_hook(record_rnn)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    if captured:
        first, first_learns = captured[0]
        if first.lengths is not None:
            return first
        carried = _carried_on(first.x, calls)
        if carried is first.x and first.h0 is None and not first_learns and len({call.weights for call in calls}) == 1:
            carried = torch.cat([c.x for c, learns in captured if c.h0 is None and c.lengths is None and not learns
                                 and c.x.shape[1:] == first.x.shape[1:]])
        return first._replace(x=carried)
    if calls and calls[0].x is not None:  # `step` alone
        return BackboneInput(_carried_on(calls[0].x, calls), None, calls[0].h0)
    raise UserError(f"{type(model).__name__}: the task's predict_step did not run its backbone (neither `backbone(x)` "
                    "nor `backbone.step`) without learning: there is no sequence to trace")


def _carried_on(x: Tensor, calls: list[_RNNCall]) -> Tensor:
    """`x` (the first call's input) followed by the inputs of the later calls that carried its state on, up to a
    change of the weights; calls of another module (a copy) or from another state are passed over."""
    if not calls or calls[0].x is None or not torch.equal(calls[0].x, x):
        return x
    chain = [calls[0]]
    for call in calls[1:]:
        if call.weights[0] != chain[0].weights[0]:
            continue
        if call.weights != chain[0].weights:
            break
        if call.x is not None and call.h0 is chain[-1].h_n:
            chain.append(call)
    return torch.cat([call.x for call in chain], dim=1) if len(chain) > 1 else x


def sample_sequence(x: Tensor, lengths: Tensor | None, sample: int) -> Tensor:
    """Sequence `sample` of a batch (B, T, F) as a batch of one, without its padding."""
    if not 0 <= sample < x.size(0):
        raise IndexError(f"sample {sample} is not in a batch of {x.size(0)} sequences")
    steps = x.size(1) if lengths is None else int(lengths[sample])
    if steps < 1:
        raise UserError(f"sample={sample} is an empty sequence (no time steps): there are no gates to draw")
    return x[sample : sample + 1, :steps]


def checked_view(view: Any, steps: int, task: str | None) -> SequenceView | None:
    """A task's `describe_sequence` answer for a sequence of `steps` time steps, if it is None or a SequenceView
    with one label per step (or none); else a UserError naming the task."""
    where = f"task {task!r}: describe_sequence()"
    if view is not None and not isinstance(view, SequenceView):
        raise UserError(f"{where} returned a {type(view).__name__}, not a gru_suite.task.SequenceView (or None)")
    if view is not None and view.steps is not None and len(view.steps) != steps:
        raise UserError(f"{where} gave {len(view.steps)} time-step labels for a sequence of {steps} steps (as the "
                        "backbone reads it): one label per step, or steps=None")
    return view


def plot_model_gates(
    module: TaskModule, out_dir: str | Path, sample: int = 0
) -> tuple[SequenceView | None, list[Path]]:
    """Plot a trained task model's gates on one sequence of its prediction data; return what the task says the
    sequence is (its `describe_sequence`) and the PNGs' paths.

    Prediction batches run through the task as usual, each one's backbone input captured, until the one that
    holds sequence `sample` (counted across the batches, as the backbone reads them); that sequence, without
    padding, is replayed through `trace_gates` from the state the model started it from, and drawn.
    """
    datamodule = task_datamodule(module.task)
    datamodule.setup("predict")
    if sample < 0:
        raise UserError(f"sample={sample} is out of range: sequences are counted from 0")
    seen = 0
    for batch in datamodule.predict_dataloader():
        with torch.no_grad():
            x, lengths, h0 = capture_backbone_input(
                module.model, lambda batch=batch: module.task.predict_step(module.model, batch))
        if sample < seen + x.size(0):
            break
        seen += x.size(0)
    else:
        raise UserError(f"sample={sample} is out of range: the prediction data holds {seen} sequence(s) as the "
                        "backbone reads them")
    within = sample - seen
    sequence = sample_sequence(x, lengths, within)
    view = checked_view(module.task.describe_sequence(datamodule, batch, within), sequence.size(1),
                        module.task.cfg.get("name"))
    shown = view or SequenceView(f"sample {sample}")  # the traced batch holds that one sequence
    start = None if h0 is None else h0[:, within : within + 1]  # the state the model started that sequence from
    return view, plot_gates(trace_gates(module.model.backbone, sequence, start), Path(out_dir), view=shown)
