import re
import warnings

import pytest
import torch

from gru_suite.backbone import GRUBackbone
from gru_suite.errors import UserError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_shapes(cell, layers, bidirectional):
    net = GRUBackbone(5, hidden_size=8, num_layers=layers, bidirectional=bidirectional, cell=cell)
    out, h = net(torch.randn(3, 7, 5))
    dirs = 2 if bidirectional else 1
    assert out.shape == (3, 7, 8 * dirs) == (3, 7, net.output_size)
    h_n = h[0] if cell == "lstm" else h
    assert h_n.shape == (layers * dirs, 3, 8)
    assert net.last_hidden(h).shape == (3, net.output_size)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_dropout_acts_between_stacked_layers_in_training_only(cell):
    x = torch.randn(2, 5, 4)
    stacked = GRUBackbone(4, hidden_size=6, num_layers=2, dropout=0.5, cell=cell)
    assert not torch.equal(stacked(x)[0], stacked(x)[0])  # a new mask each pass
    stacked.eval()
    assert torch.equal(stacked(x)[0], stacked(x)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nn.GRU warns of a dropout with no layer after the only one to act on
        single = GRUBackbone(4, hidden_size=6, num_layers=1, dropout=0.5, cell=cell)
    assert torch.equal(single(x)[0], single(x)[0])


def test_bidirectional_last_hidden_joins_both_directions():
    net = GRUBackbone(4, hidden_size=6, bidirectional=True)
    x = torch.randn(2, 5, 4)
    out, h = net(x)
    last = net.last_hidden(h)
    torch.testing.assert_close(last[:, :6], out[:, -1, :6])  # forward direction ends at t = T-1
    torch.testing.assert_close(last[:, 6:], out[:, 0, 6:])  # backward direction ends at t = 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_packed_batch_matches_each_sequence_alone(cell):
    net = GRUBackbone(3, hidden_size=5, num_layers=2, cell=cell).eval()
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 6, 3)
    out, h = net(x, lengths)
    h_n = h[0] if cell == "lstm" else h
    for i, n in enumerate(lengths.tolist()):
        alone, h_alone = net(x[i : i + 1, :n])
        h_alone = h_alone[0] if cell == "lstm" else h_alone
        torch.testing.assert_close(out[i, :n], alone[0])
        torch.testing.assert_close(h_n[:, i], h_alone[:, 0])
        assert torch.all(out[i, n:] == 0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_an_item_of_length_zero_outputs_zeros_and_keeps_its_initial_state(cell, bidirectional):
    net = GRUBackbone(3, hidden_size=5, num_layers=2, cell=cell, bidirectional=bidirectional).eval()
    x, lengths = torch.randn(3, 4, 3), torch.tensor([4, 0, 2])
    states = 2 * (2 if bidirectional else 1)
    h0 = torch.randn(states, 3, 5)
    h0 = (h0, torch.randn(states, 3, 5)) if cell == "lstm" else h0
    out, h = net(x, lengths, h0)
    kept = tuple(s[:, [0, 2]] for s in h0) if cell == "lstm" else h0[:, [0, 2]]
    others, h_others = net(x[[0, 2]], lengths[[0, 2]], kept)
    assert torch.all(out[1] == 0)
    torch.testing.assert_close(out[[0, 2]], others)
    for state, start, other in zip(*((h, h0, h_others) if cell == "lstm" else ((h,), (h0,), (h_others,)))):
        torch.testing.assert_close(state[:, 1], start[:, 1])  # nothing read: its initial state
        torch.testing.assert_close(state[:, [0, 2]], other)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_first_layer_is_the_stack_s_first_layer_alone(cell):
    net = GRUBackbone(3, hidden_size=5, num_layers=2, bidirectional=True, cell=cell).eval()
    alone = GRUBackbone(3, hidden_size=5, num_layers=1, bidirectional=True, cell=cell).eval()
    alone.rnn.load_state_dict({name: value for name, value in net.rnn.state_dict().items() if "_l0" in name})
    x, lengths = torch.randn(3, 6, 3), torch.tensor([6, 2, 4])
    torch.testing.assert_close(net.first_layer(x, lengths), alone(x, lengths)[0])
    net.first_layer(x, lengths).sum().backward()
    assert net.rnn.weight_ih_l0.grad.abs().sum() > 0 and net.rnn.weight_ih_l1.grad is None


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_equals_forward(cell):
    net = GRUBackbone(4, hidden_size=7, num_layers=3, dropout=0.2, cell=cell).eval()
    x = torch.randn(2, 9, 4)
    full, h_full = net(x)
    h = None
    for t in range(x.size(1)):
        y, h = net.step(x[:, t], h)
        torch.testing.assert_close(y, full[:, t], atol=1e-6, rtol=1e-5)
    if cell == "lstm":
        torch.testing.assert_close(h[0], h_full[0], atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(h, h_full, atol=1e-6, rtol=1e-5)


def test_initial_state_is_used():
    net = GRUBackbone(2, hidden_size=3)
    x = torch.randn(1, 4, 2)
    h0 = torch.ones(1, 1, 3)
    assert not torch.allclose(net(x)[0], net(x, h0=h0)[0])


def test_step_rejects_bidirectional():
    with pytest.raises(RuntimeError, match="unidirectional"):
        GRUBackbone(2, hidden_size=3, bidirectional=True).step(torch.randn(1, 2))


def test_unknown_cell():
    with pytest.raises(ValueError, match="backbone.cell"):
        GRUBackbone(2, cell="rnn")


def test_gru_has_three_quarters_of_lstm_parameters():
    gru, lstm = GRUBackbone(10, 32), GRUBackbone(10, 32, cell="lstm")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(gru) * 4 == count(lstm) * 3


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_weight_dropout_masks_recurrent_weights_once_per_batch(cell):
    net = GRUBackbone(3, hidden_size=6, num_layers=2, cell=cell, weight_dropout=0.5).train()
    lengths = torch.tensor([5, 3])
    x = torch.randn(2, 5, 3)
    masked = GRUBackbone(3, hidden_size=6, num_layers=2, cell=cell).eval()
    torch.manual_seed(7)
    out, _ = net(x, lengths)
    torch.manual_seed(7)  # the same draws, applied by hand: one mask per weight matrix, kept over every step
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for name, weight in net.rnn.named_parameters():
        if name.startswith("weight_hh"):
            state[f"rnn.{name}"] = torch.nn.functional.dropout(weight.detach(), 0.5)
    masked.load_state_dict(state)
    torch.testing.assert_close(out, masked(x, lengths)[0])
    out.sum().backward()
    grad = net.rnn.weight_hh_l0.grad
    assert grad.abs().sum() > 0 and (grad == 0).float().mean() > 0.3  # dropped weights get no gradient
    net.eval()  # no dropout outside training: the plain fused pass
    torch.testing.assert_close(net(x)[0], net.rnn(x)[0])


def test_weight_dropout_out_of_range_or_not_a_number_is_a_user_error():
    with pytest.raises(UserError, match=r"backbone.weight_dropout must be in \[0, 1\), got 1.0"):
        GRUBackbone(3, weight_dropout=1.0)
    with pytest.raises(UserError, match=r"backbone.weight_dropout must be a finite number, got 'abc'"):
        GRUBackbone(3, weight_dropout="abc")


def test_lengths_outside_the_sequences_are_named() -> None:
    backbone, x = GRUBackbone(input_size=3, hidden_size=4), torch.zeros(2, 5, 3)
    for lengths in ([6, 2], [3, -1]):
        with pytest.raises(ValueError, match=r"lengths must be within 0\.\.5 \(the time steps of x\), got "):
            backbone(x, torch.tensor(lengths))
    out, _ = backbone(x, [5, 2])  # a list is read as a tensor
    assert out.shape == (2, 5, 4) and not out[1, 2:].any()


def test_lengths_that_are_not_one_whole_number_per_sequence_are_named() -> None:
    backbone, x = GRUBackbone(input_size=3, hidden_size=4), torch.zeros(3, 4, 3)
    wrong = {"int64 of shape (2,)": torch.tensor([4, 2]),  # would drop the third sequence
             "int64 of shape (4,)": torch.tensor([4, 2, 1, 1]),
             "bool of shape (3, 4)": torch.ones(3, 4, dtype=torch.bool),  # a padding mask, not lengths
             "float32 of shape (3,)": torch.tensor([3.5, 2.0, 1.0])}
    for said, lengths in wrong.items():
        with pytest.raises(ValueError, match=re.escape(f"lengths must be whole numbers, one per sequence of x (3), "
                                                       f"got {said}")):
            backbone(x, lengths)


def test_inputs_of_the_wrong_rank_are_named() -> None:
    backbone = GRUBackbone(input_size=5, hidden_size=4)
    with pytest.raises(ValueError, match=re.escape("x must be (batch, time, 5), got shape (4, 5)")):
        backbone(torch.zeros(4, 5))  # one sequence without its batch axis: not run as if unbatched
    for x_t in (torch.zeros(5), torch.zeros(3, 1, 5), torch.zeros(3, 4)):
        said = f"step() takes x_t of shape (batch, 5), got {tuple(x_t.shape)}"
        with pytest.raises(ValueError, match=re.escape(said)):
            backbone.step(x_t)
