"""Gate introspection matches the fused nn.GRU and plots one PNG per layer."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gru_suite.backbone import GRUBackbone
from gru_suite.errors import UserError
from gru_suite.gates import capture_backbone_input, plot_gates, sample_sequence, trace_gates
from gru_suite.task import SequenceView

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CASES = {
    "1-layer": dict(num_layers=1, bidirectional=False),
    "3-layer": dict(num_layers=3, bidirectional=False),
    "bidir-2-layer": dict(num_layers=2, bidirectional=True),
}


def _backbone(seed: int = 0, **kwargs) -> GRUBackbone:
    torch.manual_seed(seed)
    backbone = GRUBackbone(input_size=3, hidden_size=5, **kwargs).eval()
    with torch.no_grad():
        for param in backbone.parameters():
            param.uniform_(-1.0, 1.0)
    return backbone


def _input(seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 7, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "random-h0"])
@pytest.mark.parametrize("config", CASES.values(), ids=CASES.keys())
def test_trace_matches_nn_gru(config: dict, with_h0: bool) -> None:
    backbone = _backbone(**config)
    x = _input()
    dirs = 2 if backbone.bidirectional else 1
    h0 = torch.randn(backbone.num_layers * dirs, x.size(0), backbone.hidden_size) * 0.5 if with_h0 else None
    out, h_n = backbone(x, h0=h0)
    trace = trace_gates(backbone, x, h0)

    assert [t.layer for t in trace] == list(range(backbone.num_layers))
    torch.testing.assert_close(trace[-1].hidden, out, atol=1e-5, rtol=0)
    for t in trace:
        torch.testing.assert_close(t.final_hidden(), h_n[t.layer * dirs : (t.layer + 1) * dirs], atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "random-h0"])
def test_each_gate_equals_pytorchs_gru_equations_on_nn_grus_own_states(with_h0: bool) -> None:
    """r, z and n at every step, from the weights' (r, z, n) chunks and the previous state nn.GRU itself computed."""
    backbone = _backbone()
    x = _input()
    h0 = torch.randn(1, x.size(0), backbone.hidden_size) * 0.5 if with_h0 else torch.zeros(1, x.size(0), 5)
    rnn = backbone.rnn
    with torch.no_grad():
        out, _ = rnn(x, h0)
        (trace,) = trace_gates(backbone, x, h0)
        previous = torch.cat([h0.transpose(0, 1), out[:, :-1]], dim=1)  # h_{t-1}, as nn.GRU computed it
        i_r, i_z, i_n = (x @ w.T + b for w, b in zip(rnn.weight_ih_l0.chunk(3), rnn.bias_ih_l0.chunk(3)))
        h_r, h_z, h_n = (previous @ w.T + b for w, b in zip(rnn.weight_hh_l0.chunk(3), rnn.bias_hh_l0.chunk(3)))
        reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
    torch.testing.assert_close(trace.reset, reset, atol=1e-5, rtol=0)
    torch.testing.assert_close(trace.update, update, atol=1e-5, rtol=0)
    torch.testing.assert_close(trace.candidate, candidate, atol=1e-5, rtol=0)
    torch.testing.assert_close((1 - update) * candidate + update * previous, out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", CASES.values(), ids=CASES.keys())
def test_gate_ranges_and_shapes(config: dict) -> None:
    backbone = _backbone(**config)
    x = _input()
    for t in trace_gates(backbone, x):
        for gate in (t.update, t.reset, t.candidate, t.hidden):
            assert gate.shape == (x.size(0), x.size(1), backbone.output_size)
            assert not gate.requires_grad
        assert t.update.min() >= 0 and t.update.max() <= 1
        assert t.reset.min() >= 0 and t.reset.max() <= 1
        assert t.candidate.min() >= -1 and t.candidate.max() <= 1


def test_lstm_backbone_rejected() -> None:
    with pytest.raises(ValueError, match="GRU"):
        trace_gates(GRUBackbone(input_size=3, hidden_size=5, cell="lstm"), _input())


def test_a_model_without_a_backbone_attribute_is_one_clear_error() -> None:
    model = torch.nn.Sequential(_backbone())
    with pytest.raises(UserError, match="Sequential has no `backbone` attribute holding its GRUBackbone"):
        capture_backbone_input(model, lambda: model(_input()))


def test_a_prediction_that_never_runs_the_backbone_is_one_clear_error() -> None:
    from types import SimpleNamespace

    with pytest.raises(UserError, match="did not run its backbone"):
        capture_backbone_input(SimpleNamespace(backbone=_backbone()), lambda: None)


def test_a_padded_sequence_is_traced_without_its_padding() -> None:
    class Reader(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = _backbone(num_layers=2, bidirectional=True)

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.backbone(x=x, lengths=lengths)[0]  # by keyword, as a plugin may call it

    model, x, lengths = Reader().eval(), _input(), torch.tensor([6, 3, 5, 2])
    captured, captured_lengths, h0 = capture_backbone_input(model, lambda: model(x, lengths))
    assert torch.equal(captured, x) and torch.equal(captured_lengths, lengths) and h0 is None
    sequence = sample_sequence(captured, captured_lengths, 1)
    assert sequence.shape == (1, 3, x.size(-1))
    trace = trace_gates(model.backbone, sequence)  # backward direction starts at the last real step, not padding
    torch.testing.assert_close(trace[-1].hidden[0], model(x, lengths)[1, :3], atol=1e-5, rtol=1e-5)
    for outside in (4, -1):  # not the last sequence counted from the end
        with pytest.raises(IndexError, match=f"sample {outside} is not in a batch of 4 sequences"):
            sample_sequence(captured, captured_lengths, outside)


def test_input_of_another_precision_is_traced_in_the_models() -> None:
    backbone, x, h0 = _backbone(num_layers=2), _input(), torch.rand(2, 4, 5)
    traced = trace_gates(backbone, x.double(), h0.double())
    assert traced[-1].hidden.dtype == torch.float32
    torch.testing.assert_close(traced[-1].hidden, trace_gates(backbone, x, h0)[-1].hidden)


def test_bad_h0_shape_rejected() -> None:
    backbone = _backbone(num_layers=2)
    with pytest.raises(ValueError, match=re.escape("h0 must be a tensor of shape (2, 4, 5), got (1, 4, 5)")):
        trace_gates(backbone, _input(), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match=re.escape("h0 must be a tensor of shape (2, 4, 5), got tuple")):
        trace_gates(backbone, _input(), (torch.zeros(2, 4, 5),))  # an LSTM's (h, c) by habit


def test_an_input_without_time_steps_or_of_another_width_is_named() -> None:
    backbone = _backbone()
    for x in (torch.zeros(2, 0, 3), torch.zeros(2, 6, 4), torch.zeros(6, 3)):
        expected = f"x must have shape (batch, time >= 1, 3), got {tuple(x.shape)}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            trace_gates(backbone, x)
    with pytest.raises(UserError, match="sample=1 is an empty sequence"):
        sample_sequence(torch.zeros(2, 6, 3), torch.tensor([6, 0]), 1)


def test_plot_gates_writes_one_png_per_layer(tmp_path) -> None:
    backbone = _backbone(num_layers=2, bidirectional=True)
    paths = plot_gates(trace_gates(backbone, _input()), tmp_path / "plots", sample=1, prefix="demo")

    assert paths == [tmp_path / "plots" / f"demo_layer{k}.png" for k in range(2)]
    for path in paths:
        assert path.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["demo_layer0.png", "demo_layer1.png"]


def test_plots_label_time_steps_thinned_and_refuse_a_wrong_count(tmp_path, monkeypatch) -> None:
    from gru_suite import gates

    drawn: list = []
    monkeypatch.setattr(gates, "save_figure", lambda figure, path: drawn.append(figure) or path)
    backbone = _backbone()
    words = [f"w{t}" for t in range(7)]
    plot_gates(trace_gates(backbone, _input()), tmp_path, view=SequenceView("a text", words))
    axis = drawn[-1].axes[3].xaxis  # the 4th (last) heat map's
    assert [label.get_text() for label in axis.get_ticklabels()] == words and axis.get_label_text() == "time step"
    assert drawn[-1].get_suptitle() == "GRU gates: layer 0, a text"
    long = torch.randn(1, 130, 3)
    plot_gates(trace_gates(backbone, long), tmp_path, view=SequenceView("long", [str(t) for t in range(130)]))
    axis = drawn[-1].axes[3].xaxis
    assert [label.get_text() for label in axis.get_ticklabels()] == [str(t) for t in range(0, 130, 3)]
    assert axis.get_label_text() == "time step (one in 3 labelled)"
    with pytest.raises(ValueError, match="6 time-step labels for a sequence of 7 steps"):
        plot_gates(trace_gates(backbone, _input()), tmp_path, view=SequenceView("a text", words[:6]))
    plot_gates(trace_gates(backbone, _input()), tmp_path, sample=2)
    assert drawn[-1].get_suptitle() == "GRU gates: layer 0, sample 2"
    for sample in (-1, 4):  # not the last item under another name, nor an IndexError
        with pytest.raises(ValueError, match=re.escape(f"sample must be a batch item, 0..3, got {sample}")):
            plot_gates(trace_gates(backbone, _input()), tmp_path, sample=sample)


def test_a_bidirectional_layer_draws_a_line_between_its_directions(tmp_path, monkeypatch) -> None:
    from gru_suite import gates

    drawn: list = []
    monkeypatch.setattr(gates, "save_figure", lambda figure, path: drawn.append(figure) or path)
    plot_gates(trace_gates(_backbone(bidirectional=True), _input()), tmp_path)
    ax = drawn[0].axes[0]
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [4.5]  # 5 forward units, then 5 backward
    assert ax.get_ylabel() == "unit (forward | backward)"
    plot_gates(trace_gates(_backbone(), _input()), tmp_path)
    assert drawn[1].axes[0].get_lines() == [] and drawn[1].axes[0].get_ylabel() == "unit"


def test_dollar_signs_in_a_title_or_a_token_are_drawn_as_text(tmp_path) -> None:
    view = SequenceView("it costs $x_$ now", [f"$x{t}_$" for t in range(7)])  # pairs of $ are mathtext
    paths = plot_gates(trace_gates(_backbone(), _input()), tmp_path, view=view)  # mathtext: ValueError at save
    assert paths[0].read_bytes().startswith(PNG_MAGIC)


def test_captured_input_follows_the_calls_that_carry_its_state_with_the_same_weights() -> None:
    from types import SimpleNamespace

    model = SimpleNamespace(backbone=_backbone())
    x, more, again = _input(), _input(2)[:, :2], _input(3)[:, :1]

    def stream(change_weights: bool) -> None:
        _, h = model.backbone(x)
        _, h = model.backbone(more, h0=h)  # a second chunk, carrying the state on
        model.backbone(x)  # a fresh start: not part of the stream
        if change_weights:
            with torch.no_grad():
                model.backbone.rnn.weight_hh_l0.add_(0.1)  # as a fine-tune in between would
        model.backbone.step(again[:, 0], h)

    with torch.no_grad():
        captured, lengths, _ = capture_backbone_input(model, lambda: stream(change_weights=False))
        assert lengths is None and torch.equal(captured, torch.cat([x, more, again], dim=1))  # the step follows too
        captured = capture_backbone_input(model, lambda: stream(change_weights=True)).x
        assert torch.equal(captured, torch.cat([x, more], dim=1))  # other weights: the trace stops before them


def test_captured_input_is_the_first_call_alone_when_learning_or_bidirectional() -> None:
    from types import SimpleNamespace

    x, more = _input(), _input(2)[:, :2]
    for backbone, grad in ((_backbone(), True), (_backbone(bidirectional=True), False)):
        model = SimpleNamespace(backbone=backbone)
        with torch.set_grad_enabled(grad):  # learning keeps no inputs (a fine-tune's would pile up); a
            captured = capture_backbone_input(model, lambda b=backbone: b(more, h0=b(x)[1])).x
        assert torch.equal(captured, x)  # bidirectional chunk is no continuation of a whole sequence


class _Conditioned(torch.nn.Module):
    """A model that starts its backbone from a state of its own (a decoder's, say), and may only stream it."""

    def __init__(self, stream: bool) -> None:
        super().__init__()
        self.backbone, self.stream = _backbone(num_layers=2), stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = 0.3 * torch.arange(1.0, x.size(0) + 1)[None, :, None].expand(2, x.size(0), 5).contiguous()
        if not self.stream:
            return self.backbone(x, h0=h)[0]
        outputs = []
        for t in range(x.size(1)):
            out, h = self.backbone.step(x[:, t], h)
            outputs.append(out)
        return torch.stack(outputs, 1)


@pytest.mark.parametrize("stream", [False, True], ids=["forward", "step"])
def test_gate_plots_replay_a_sequence_from_the_state_the_model_started_it_from(stream: bool, tmp_path,
                                                                                monkeypatch) -> None:
    from types import SimpleNamespace

    import pytorch_lightning as pl

    from gru_suite import gates

    model, x, drawn = _Conditioned(stream).eval(), _input(), []
    datamodule = pl.LightningDataModule()
    datamodule.predict_dataloader = lambda: [x]
    task = SimpleNamespace(datamodule=lambda: datamodule, predict_step=lambda m, batch: m(batch),
                           describe_sequence=lambda *args: None, cfg={"name": "conditioned"})
    monkeypatch.setattr(gates, "save_figure", lambda figure, path: drawn.append(figure) or path)
    gates.plot_model_gates(SimpleNamespace(task=task, model=model), tmp_path, sample=2)
    h0 = 0.3 * 3 * torch.ones(2, 1, 5)  # sample 2's
    trace = trace_gates(model.backbone, x[2:3], h0)
    torch.testing.assert_close(trace[-1].hidden[0], model(x)[2], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(drawn[-1].axes[0].images[0].get_array(), trace[-1].update[0].numpy().T, atol=1e-6)


def test_a_batch_read_in_parts_from_no_state_is_traced_as_one() -> None:
    """A long series' windows scored a part at a time: a sequence number counts through all the parts."""
    from types import SimpleNamespace

    model, x = SimpleNamespace(backbone=_backbone()), torch.randn(10, 7, 3)

    def score() -> None:
        for part in x.split(4):
            model.backbone(part)
        with torch.enable_grad():
            model.backbone(torch.randn(2, 7, 3))  # learning in between: not read for the scores

    with torch.no_grad():
        assert torch.equal(capture_backbone_input(model, score).x, x)
