"""The sentiment task: tokenizer, padding-invariant model, learning, calibration, artifacts, CLI and bad input."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import os
import random
import re
import subprocess
import sys
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

from gru_suite import artifacts, run
from gru_suite.backbone import GRUBackbone
from gru_suite.checkpoint import fixed_by_training, load_checkpoint, stored_config
from gru_suite.errors import UserError
from gru_suite.testing import check_task_plugin, compose_train_config
from gru_suite.text import BOS_ID, EOS_ID, PAD_ID, UNK_ID, pad_ids, train_tokenizer
from gru_suite_plugins.sentiment.data import label_order, read_labelled, read_texts
from gru_suite_plugins.sentiment.explain import (
    Word,
    highlight_html,
    highlight_terminal,
    html_page,
    top_words,
    word_weights,
)
from gru_suite_plugins.sentiment.model import SentimentModel, fit_temperature
from gru_suite_plugins.sentiment.synth import corpus_files
from gru_suite_plugins.sentiment.losses import adversarial_loss, classification_loss, virtual_adversarial_loss
from gru_suite_plugins.sentiment.task import altered_copy
from conftest import resumed_and_uninterrupted, resumed_part_way_and_uninterrupted, run_cli

TINY = ["backbone.hidden_size=16", "task.model.embed_size=16", "task.data.batch_size=16", "logger=none",
        "callbacks.progress_bar=null"]
GOOD = ("good", "great", "lovely", "superb", "fine")
BAD = ("bad", "awful", "dull", "poor", "weak")


def separable(rows: int, seed: int) -> list[tuple[str, str]]:
    """`label sentence` pairs whose label is decided by one polar word among neutral filler."""
    rng = random.Random(seed)
    filler = ("the", "film", "was", "really", "plot", "and", "very", "a")
    out = []
    for _ in range(rows):
        label = rng.choice(("pos", "neg"))
        words = rng.sample(filler, rng.randint(1, 6))
        words.insert(rng.randint(0, len(words)), rng.choice(GOOD if label == "pos" else BAD))
        out.append((" ".join(words), label))
    return out


def run_with_stdin(command: str, *args: str, text: str) -> subprocess.CompletedProcess:
    """Run a gru-suite console script with `text` on its stdin."""
    exe = Path(sys.executable).parent / command
    return subprocess.run([str(exe), *args], input=text, capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"}, timeout=300)


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI subprocesses in one intra-op thread: tiny models run fastest so, above all on a shared CPU."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("separable")
    return {split: write_csv(folder / f"{split}.csv", separable(n, seed))
            for split, n, seed in (("train", 400, 0), ("val", 80, 1), ("test", 80, 2))}


def data_overrides(corpus: dict[str, Path]) -> list[str]:
    return [f"task.data.{split}={path}" for split, path in corpus.items()]


def test_the_runs_seed_draws_the_training_batches(corpus: dict[str, Path], tmp_path: Path) -> None:
    import pytorch_lightning as pl

    cfg = compose_train_config("sentiment", [*TINY, *data_overrides(corpus)], tmp_path)
    first = {}
    for seed in (1, 2, 1):
        pl.seed_everything(seed, verbose=False)
        batch = next(iter(run.build_task(cfg.task).datamodule().train_dataloader()))
        first.setdefault(seed, batch.index.tolist())
        assert first[seed] == batch.index.tolist()  # the same seed, the same batches
    assert first[1] != first[2]


def test_balanced_class_weights_weigh_each_text_by_its_labels_rarity(tmp_path: Path) -> None:
    rows = [row for row in separable(400, 3) if row[1] == "pos"][:30] + [(f"awful {i}", "neg") for i in range(10)]
    train = write_csv(tmp_path / "train.csv", rows)
    settings = [f"task.data.train={train}", f"task.data.val={train}", "task.data.test=null",
                "task.model.class_weights=balanced"]
    cfg = compose_train_config("sentiment", [*TINY, *settings], tmp_path / "run")
    task = run.build_task(cfg.task)
    batch = next(iter(task.datamodule().val_dataloader()))
    assert task.labels == ["neg", "pos"] and task.state["class_weights"] == pytest.approx([2.0, 40 / 60])
    model = task.build_model(partial(GRUBackbone, hidden_size=8)).eval()
    with torch.no_grad():
        out = task.step(model, batch, "val")
        logits, _ = model(batch.ids, batch.lengths)
    weights = torch.tensor([2.0, 40 / 60])[batch.labels]
    losses = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="none")
    torch.testing.assert_close(out.loss, (weights * losses).sum() / weights.sum())
    torch.testing.assert_close(out.loss_weight, weights.sum())


@pytest.fixture(scope="module")
def trained(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A run folder (checkpoints, predictions, confusion matrix) trained on the separable corpus, and its metrics."""
    folder = tmp_path_factory.mktemp("trained")
    cfg = compose_train_config("sentiment", [*TINY, *data_overrides(corpus), "trainer.max_epochs=8", "seed=1",
                                             "optimizer.lr=1e-2", f"task.report_dir={folder}"], folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return folder, run.train(cfg)
    finally:
        torch.set_num_threads(threads)


def tiny_model(pooling: str) -> SentimentModel:
    torch.manual_seed(0)
    return SentimentModel(partial(GRUBackbone, hidden_size=8), 30, 3, 8, pooling, dropout=0.0).eval()


@pytest.mark.parametrize("kind", ["bpe", "unigram", "word"])
def test_tokenizer_round_trips(kind: str) -> None:
    texts = ["the film was not good , but the ending is great .", "a dull , lifeless sequel"] * 20
    tokenizer = train_tokenizer(texts, kind=kind, vocab_size=60, lowercase=True, min_frequency=1)
    text = "The ending is not dull , but great ."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    specials = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert specials == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    if kind == "word":
        assert tokenizer.convert_ids_to_tokens(ids) == text.lower().split()
    else:
        assert tokenizer.decode(ids) == text.lower()


@pytest.mark.parametrize("pooling", ["attention", "max_mean"])
def test_padding_does_not_change_a_prediction(pooling: str) -> None:
    model = tiny_model(pooling)
    short, long = torch.tensor([4, 9, 2, 7]), torch.tensor([5, 3, 8, 8, 1, 6, 2, 9, 4])
    alone, alone_weights = model.probabilities(short[None], torch.tensor([4]))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, :9], batch[1, :4] = long, short
    padded, padded_weights = model.probabilities(batch, torch.tensor([9, 4]))
    torch.testing.assert_close(padded[1], alone[0])
    torch.testing.assert_close(padded_weights[1, :4], alone_weights[0])
    assert not padded_weights[1, 4:].any() and padded_weights.sum(-1).allclose(torch.ones(2))
    torch.testing.assert_close(padded.sum(-1), torch.ones(2))
    (alone, alone_saliency), (padded, padded_saliency) = (model.saliency(short[None], torch.tensor([4])),
                                                          model.saliency(batch, torch.tensor([9, 4])))
    torch.testing.assert_close(padded[1], alone[0])
    torch.testing.assert_close(padded_saliency[1, :4], alone_saliency[0])
    assert not padded_saliency[1, 4:].any() and alone_saliency.abs().sum() > 0
    with torch.no_grad():  # the packed backbone over the padded batch agrees with an unpacked pass
        unpacked, _ = model.backbone(model.embedding(short[None]))
        packed, _ = model.backbone(model.embedding(batch), torch.tensor([9, 4]))
    torch.testing.assert_close(packed[1, :4], unpacked[0])


@pytest.mark.parametrize("layers", [1, 2])
def test_language_model_heads_predict_from_the_right_side_only(layers: int) -> None:
    torch.manual_seed(0)
    backbone = partial(GRUBackbone, hidden_size=8, num_layers=layers)
    model = SentimentModel(backbone, 30, 2, 8, dropout=0.0, lm_words=20).eval()
    ids, lengths = torch.tensor([[4, 25, 9, 2, 7, 3]]), torch.tensor([6])
    embedded = model.embedding(ids).detach().requires_grad_()
    h = model.language_states(embedded, lengths)  # a second layer's states would have seen both sides
    forward, backward = model.lm_heads[0](h[0, 2, :8]), model.lm_heads[1](h[0, 2, 8:])
    (seen_forward,) = torch.autograd.grad(forward.sum(), embedded, retain_graph=True)
    (seen_backward,) = torch.autograd.grad(backward.sum(), embedded)
    assert seen_forward[0, :3].abs().sum() > 0 and not seen_forward[0, 3:].any()  # the next word stays unseen
    assert seen_backward[0, 2:].abs().sum() > 0 and not seen_backward[0, :2].any()  # and the previous one
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = model.lm_loss(model.language_states(model.embedding(ids), lengths), ids, lengths).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = model.lm_loss(model.language_states(model.embedding(ids), lengths), ids, lengths)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first


def test_the_language_model_loss_asks_each_state_for_a_word_it_has_not_read() -> None:
    torch.manual_seed(0)
    model = SentimentModel(partial(GRUBackbone, hidden_size=8), 30, 2, 8, dropout=0.0, lm_words=20).eval()
    ids, lengths = torch.tensor([[4, 25, 9, 2, 7, 3]]), torch.tensor([6])
    h = model.language_states(model.embedding(ids), lengths).detach().requires_grad_()
    (grad,) = torch.autograd.grad(model.lm_loss(h, ids, lengths), h)
    # the forward state at t has read up to word t and predicts t + 1; the backward one, from t on, predicts t - 1
    assert (grad[0, :, :8].abs().sum(-1) > 0).tolist() == [True] * 5 + [False]  # the last word has no next
    assert (grad[0, :, 8:].abs().sum(-1) > 0).tolist() == [False] + [True] * 5  # the first has no previous


def test_the_language_model_loss_ignores_the_states_at_padding() -> None:
    torch.manual_seed(0)
    model = SentimentModel(partial(GRUBackbone, hidden_size=8), 30, 2, 8, dropout=0.0, lm_words=20).eval()
    ids, lengths = torch.tensor([[4, 25, 9, 2, 7, 3], [5, 6, 8, 0, 0, 0]]), torch.tensor([6, 3])
    h = model.language_states(model.embedding(ids), lengths)
    garbage = h.clone()
    garbage[1, 3:] = torch.randn_like(garbage[1, 3:])  # the backward state at step 3 must not predict token 2
    torch.testing.assert_close(model.lm_loss(garbage, ids, lengths), model.lm_loss(h, ids, lengths))


def test_word_dropout_reads_real_tokens_as_unknown_in_training_only() -> None:
    torch.manual_seed(0)
    model = SentimentModel(partial(GRUBackbone, hidden_size=8), 30, 2, 8, word_dropout=0.25)
    ids = torch.randint(2, 30, (64, 50))
    ids[:, 40:] = 0  # padding
    unknown = model.embedding.weight[1]
    dropped = (model.embed(ids) == unknown).all(-1)
    assert not dropped[:, 40:].any()  # padding stays padding
    assert dropped[:, :40].float().mean().item() == pytest.approx(0.25, abs=0.02)
    torch.testing.assert_close(model.eval().embed(ids), model.embedding(ids))
    with pytest.raises(UserError, match="word_dropout"):
        SentimentModel(partial(GRUBackbone, hidden_size=8), 30, 2, 8, word_dropout=1.0)


def test_the_loss_weighs_each_text_by_its_labels_weight() -> None:
    logits, labels, weights = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([3.0, 1.0])
    each = torch.nn.functional.cross_entropy(logits, labels, reduction="none")  # 0.127 and 2.127
    expected = float((3 * each[0] + each[1]) / 4)
    assert float(classification_loss(logits, labels, weights)) == pytest.approx(expected)
    one_hot = torch.eye(2)[labels]  # soft targets equal to the labels: the same loss at any share
    assert float(classification_loss(logits, labels, weights, one_hot, share=0.7)) == pytest.approx(expected)


def test_adversarial_copies_lose_more_than_random_moves_of_the_same_size() -> None:
    torch.manual_seed(0)
    model = SentimentModel(partial(GRUBackbone, hidden_size=8, num_layers=2), 30, 2, 8, dropout=0.0)
    ids, lengths, labels = torch.randint(2, 30, (6, 7)), torch.tensor([7, 6, 5, 4, 3, 2]), torch.tensor([0, 1] * 3)
    embedded, weights = model.embed(ids), torch.ones(2)
    loss = torch.nn.functional.cross_entropy(model.classify(embedded, lengths)[0], labels, weight=weights)
    loss_of = partial(torch.nn.functional.cross_entropy, target=labels, weight=weights)
    assert adversarial_loss(model, embedded, lengths, loss, 0.0, loss_of).item() == pytest.approx(loss.item())
    adversarial = adversarial_loss(model, embedded, lengths, loss, 1.0, loss_of)
    randoms = []
    for _ in range(20):
        move = torch.randn_like(embedded) * (ids != PAD_ID)[..., None]
        move = move / move.flatten(1).norm(dim=1)[:, None, None]  # the same norm per text
        randoms.append(torch.nn.functional.cross_entropy(model.classify(embedded + move, lengths)[0], labels).item())
    assert adversarial.item() > max(randoms)
    adversarial.backward()
    assert model.embedding.weight.grad.abs().sum() > 0  # it trains the model, through the moved embeddings


def test_virtual_adversarial_moves_change_the_probabilities_more_than_random_moves_of_the_same_size() -> None:
    torch.manual_seed(0)
    model = SentimentModel(partial(GRUBackbone, hidden_size=8, num_layers=2), 30, 2, 8, dropout=0.0)
    ids, lengths = torch.randint(2, 30, (6, 7)), torch.tensor([7, 6, 5, 4, 3, 2])
    ids[lengths[:, None] <= torch.arange(7)] = PAD_ID
    embedded = model.embed(ids)
    logits = model.classify(embedded, lengths)[0]
    assert virtual_adversarial_loss(model, embedded, lengths, logits, 0.0).item() == pytest.approx(0, abs=1e-7)
    found = virtual_adversarial_loss(model, embedded, lengths, logits, 1.0)
    target = logits.detach().log_softmax(-1)
    randoms = []
    for _ in range(20):
        move = torch.randn_like(embedded) * (ids != PAD_ID)[..., None]
        move = move / move.flatten(1).norm(dim=1)[:, None, None]  # the same norm per text
        moved = model.classify(embedded + move, lengths)[0].log_softmax(-1)
        randoms.append((target.exp() * (target - moved)).sum(-1).mean().item())
    assert found.item() > 2 * max(randoms) > 0
    found.backward()
    assert model.embedding.weight.grad.abs().sum() > 0  # it trains the model, through the moved embeddings


def test_standardised_embeddings_have_frequency_weighted_mean_zero_and_variance_one() -> None:
    torch.manual_seed(0)
    counts = [5, 0, 40, 30, 20, 10, 1, 0]  # pad (not counted), unknown (never seen), words
    model = SentimentModel(partial(GRUBackbone, hidden_size=8), 8, 2, 4, word_counts=counts)
    table = model.lookup(torch.arange(8)[None])[0]
    share = torch.tensor([0, 0, 40, 30, 20, 10, 1, 0]) / 101
    mean = share @ table
    torch.testing.assert_close(mean, torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(share @ (table - mean).square(), torch.ones(4), atol=1e-4, rtol=0)
    with torch.no_grad():
        model.embedding.weight.mul_(10).add_(30)  # embeddings that grow (or drift) do not move the model's input
    torch.testing.assert_close(model.lookup(torch.arange(8)[None])[0], table, atol=1e-4, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # nor under mixed precision: the statistics stay in float32
        torch.testing.assert_close(model.lookup(torch.arange(8)[None])[0], table, atol=1e-4, rtol=0)
    assert "word_frequencies" not in model.state_dict()  # from the task's state: checkpoints keep their keys
    plain = SentimentModel(partial(GRUBackbone, hidden_size=8), 8, 2, 4)
    torch.testing.assert_close(plain.lookup(torch.arange(8)), plain.embedding.weight)
    with pytest.raises(ValueError, match="7 counts"):
        SentimentModel(partial(GRUBackbone, hidden_size=8), 8, 2, 4, word_counts=counts[:7])


def test_pretraining_teaches_the_language_model_and_leaves_the_classifier_alone(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = tmp_path / "unlabelled.txt"
    texts.write_text("".join(f"{text}\n" for text, _ in separable(300, 7)), encoding="utf-8")
    with_bar = [setting for setting in TINY if not setting.startswith("callbacks.progress_bar")]
    cfg = compose_train_config("sentiment", [*with_bar, *data_overrides(corpus), "task.pretrain.epochs=4",
                                             f"task.pretrain.texts=[{texts}]", "optimizer.lr=1e-2",
                                             "scheduler=plateau"], tmp_path / "run")
    task = run.build_task(cfg.task)
    task.datamodule()
    module = run.build_module(cfg, task)
    phase = task.pretraining()
    assert phase is not None and phase.epochs == 4
    assert sum(len(batch.ids) for batch in phase.loader) == 300  # the file's texts, not the training texts

    def lm_loss() -> float:
        module.model.eval()
        with torch.no_grad():
            loss = sum(phase.loss(module.model, batch).item() for batch in phase.loader) / len(phase.loader)
        module.model.train()
        return loss

    before, head = lm_loss(), module.model.head.weight.detach().clone()
    bars = []
    fit = pl.Trainer.fit
    monkeypatch.setattr(pl.Trainer, "fit", lambda trainer, *args, **kwargs: bars.append(trainer.progress_bar_callback)
                        or fit(trainer, *args, **kwargs))
    last = run.pretrain(cfg, module, phase)
    assert [type(bar) for bar in bars] == [TQDMProgressBar]  # the configured bar, as in training
    assert lm_loss() < 0.9 * before and last < before  # word order is random: the floor is near log(9)
    torch.testing.assert_close(module.model.head.weight, head)  # only embeddings, GRU and LM heads learn
    assert module.pretraining is None  # training proper follows with the classification loss
    assert isinstance(module.configure_optimizers(), dict)  # and with the configured scheduler again


def test_pretraining_takes_trainer_settings_as_the_benchmarks_pass_them(corpus: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    with_bar = [setting for setting in TINY if not setting.startswith("callbacks.progress_bar")]
    cfg = compose_train_config("sentiment", [*with_bar, *data_overrides(corpus), "task.pretrain.epochs=1"], tmp_path)
    task = run.build_task(cfg.task)
    task.datamodule()
    module = run.build_module(cfg, task)
    loss = run.pretrain(cfg, module, task.pretraining(), enable_progress_bar=False, enable_model_summary=False)
    assert math.isfinite(loss)


def test_pretraining_settings_are_checked(corpus: dict[str, Path], tmp_path: Path) -> None:
    overrides = [*TINY, *data_overrides(corpus)]
    with pytest.raises(UserError, match="task.pretrain.epochs"):
        run.build_task(compose_train_config("sentiment", [*overrides, "task.pretrain.epochs=-1"], tmp_path).task)
    missing = tmp_path / "missing.txt"
    cfg = compose_train_config("sentiment", [*overrides, "task.pretrain.epochs=1", f"task.pretrain.texts=[{missing}]"],
                               tmp_path)
    with pytest.raises(UserError, match=f"task.pretrain.texts: {re.escape(str(missing))}: no such file"):
        run.build_task(cfg.task).datamodule()  # before the tokenizer is trained
    ddp = compose_train_config("sentiment", [*overrides, "task.pretrain.epochs=1", "trainer=ddp_sim"], tmp_path)
    task = run.build_task(ddp.task)
    task.datamodule()
    module = run.build_module(ddp, task)
    with pytest.raises(UserError, match="single process"):
        run.pretrain(ddp, module, task.pretraining())


def test_the_temperature_divides_the_logits_of_both_kinds_of_probabilities() -> None:
    model = tiny_model("max_mean")
    model.temperature.fill_(2.5)
    ids, lengths = torch.randint(4, 30, (4, 7)), torch.tensor([7, 5, 3, 1])
    with torch.no_grad():
        logits, _ = model(ids, lengths)
        calibrated = (logits / 2.5).softmax(-1)
        torch.testing.assert_close(model.probabilities(ids, lengths)[0], calibrated)
    torch.testing.assert_close(model.saliency(ids, lengths)[0], calibrated)


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    torch.manual_seed(0)
    logits = 4 * torch.randn(4000, 3)
    labels = torch.multinomial((logits / 2.5).softmax(-1), 1).squeeze(-1)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)
    logits[7, 1] = float("nan")  # a diverged model's: its search stepped by NaN (a RuntimeError in LBFGS)
    assert fit_temperature(logits, labels) == 1.0
    right = torch.tensor([[2.0, -1.0], [-0.5, 0.5], [1.0, 0.0]])  # every label predicted: no temperature to fit
    assert fit_temperature(right, torch.tensor([0, 1, 0])) == 1.0


def test_model_learns_a_separable_corpus_to_full_accuracy(trained: tuple[Path, dict[str, float]]) -> None:
    folder, metrics = trained
    assert metrics["test/acc"] == 1.0 and metrics["test/f1"] == 1.0
    assert 0 <= metrics["test/ece"] < 0.1 and metrics["test/temperature"] == 1.0  # all right: none to fit
    assert (folder / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predictions_carry_probabilities_and_the_deciding_word(trained: tuple[Path, dict[str, float]],
                                                               corpus: dict[str, Path]) -> None:
    folder, _ = trained
    with (folder / "predictions" / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["line", "text", "label", "prob_neg", "prob_pos", "top_words"]
    truth = {text: label for text, label in separable(80, 2)}
    assert [row["text"] for row in rows] == list(truth)  # input order
    assert rows[0]["line"] == f"{corpus['test']}:2"
    for row in rows:
        assert float(row["prob_neg"]) + float(row["prob_pos"]) == pytest.approx(1, abs=1e-5)
        assert row["label"] == truth[row["text"]]
    heaviest = [row["top_words"].split()[0] in GOOD + BAD for row in rows]  # gradient x input finds the cue
    assert sum(heaviest) >= 0.8 * len(rows)
    page = (folder / "predictions" / "explanations.html").read_text(encoding="utf-8")
    assert page.count("<tr>") == 81 and "rgba(" in page


def test_prediction_batches_have_a_size_of_their_own(trained: tuple[Path, dict[str, float]], tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("good\nbad film\na good film\nthe film was bad\nit is good\n", encoding="utf-8")
    module = load_checkpoint(trained[0] / "checkpoints" / "last.ckpt")
    module.task.cfg.predict.input = str(texts)
    module.task.cfg.data.batch_size = 3
    for size, expected in ((2, [2, 2, 1]), (None, [3, 2])):  # None: a checkpoint from before the option
        module.task.cfg.predict.batch_size = size
        data = module.task.datamodule()
        data.setup("predict")
        assert [len(batch.index) for batch in data.predict_dataloader()] == expected


def test_predictions_are_written_the_same_a_part_at_a_time(trained: tuple[Path, dict[str, float]], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from gru_suite_plugins.sentiment import task as sentiment_task

    module = load_checkpoint(trained[0] / "checkpoints" / "last.ckpt")
    module.task.cfg.predict.html_rows = module.task.cfg.predict.show = 5
    data = module.task.datamodule()
    data.setup("predict")
    predictions = [module.task.predict_step(module.model, batch) for batch in data.predict_dataloader()]
    written = {}
    for rows_at_once in (100_000, 3):  # one part; parts of 3 (80 texts)
        monkeypatch.setattr(sentiment_task, "ROWS_AT_ONCE", rows_at_once)
        paths = module.task.write_predictions(predictions, data, tmp_path / str(rows_at_once))
        written[rows_at_once] = [path.read_bytes() for path in paths]
    assert written[3] == written[100_000] and written[3][1].count(b"<tr>") == 6  # a header row and 5 texts


def test_special_tokens_written_in_a_text_are_read_as_text(trained: tuple[Path, dict[str, float]]) -> None:
    folder, _ = trained
    task = load_checkpoint(folder / "checkpoints" / "last.ckpt").task
    (ids,) = task.encode(["good <pad> film </s> <s>"])
    assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)  # the marks' characters, not the marks


def test_predict_cli_labels_stdin_and_a_csv_column(trained: tuple[Path, dict[str, float]], tmp_path: Path,
                                                    one_thread: None) -> None:
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    reviews = write_csv(tmp_path / "reviews.csv", [("x", "a superb film"), ("y", ""), ("z", "the plot was awful")],
                        header=("id", "review"))
    result = run_cli("gru-suite-predict", "task=sentiment", f"ckpt_path={ckpt}", f"task.predict.input={reviews}",
                     "task.predict.column=review", f"hydra.run.dir={tmp_path / 'csv'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{reviews}:3: empty text; skipped" in result.stderr + result.stdout
    with (tmp_path / "csv" / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["line"], r["label"]) for r in rows] == [(f"{reviews}:2", "pos"), (f"{reviews}:4", "neg")]

    stdin = run_with_stdin("gru-suite-predict", "task=sentiment", f"ckpt_path={ckpt}", "task.predict.input=-",
                             f"hydra.run.dir={tmp_path / 'stdin'}", "task.tokenizer.kind=bpe",
                             text="so dull\n<b>lovely</b> & fine\n")
    assert stdin.returncode == 0, stdin.stderr[-3000:]
    assert (f"{ckpt}: task.tokenizer fixed by training: the checkpoint's settings are used, not the override(s)"
            in stdin.stdout + stdin.stderr)  # the model's own word tokenizer reads the texts
    page = (tmp_path / "stdin" / "explanations.html").read_text(encoding="utf-8")
    assert "<b>" not in page and "&lt;" in page and "&amp;" in page


def test_the_confusion_matrix_counts_true_labels_in_rows_and_predictions_in_columns() -> None:
    from gru_suite_plugins.sentiment.scores import confusion

    always_second = torch.tensor([[0.1, 0.9]]).repeat(3, 1)
    assert confusion(always_second, torch.tensor([0, 0, 1])).tolist() == [[0, 2], [0, 1]]


def test_the_confusion_matrix_leaves_matplotlibs_backend_as_it_is(tmp_path: Path, monkeypatch) -> None:
    import matplotlib
    import numpy as np

    from gru_suite_plugins.sentiment.writer import plot_confusion

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a writer switched matplotlib's backend (a notebook's, say)")

    monkeypatch.setattr(matplotlib, "use", refused)
    path = plot_confusion(np.array([[3, 1], [0, 4]]), ["neg", "pos"], tmp_path / "c.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_cli_writes_metrics_and_the_confusion_matrix(trained: tuple[Path, dict[str, float]],
                                                          tmp_path: Path, one_thread: None) -> None:
    (tmp_path / "confusion_matrix.png").write_bytes(b"an earlier evaluation's")
    result = run_cli("gru-suite-eval", "task=sentiment", f"ckpt_path={trained[0] / 'checkpoints' / 'last.ckpt'}",
                     f"hydra.run.dir={tmp_path}", "task.report_dir=null")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "confusion_matrix.1.png").read_bytes() == b"an earlier evaluation's"  # set aside
    assert '"test/acc": 1.0' in (tmp_path / "test_metrics.json").read_text()


def test_highlighting_marks_the_heaviest_words_and_escapes() -> None:
    text = "<i>not</i> good"
    words = word_weights(text, [(0, 3), (3, 6), (6, 10), (11, 15)], [0, 0, 0, 1], torch.tensor([0.1, 0.1, 0.1, 0.7]))
    assert words == [Word(0, 10, pytest.approx(0.3)), Word(11, 15, pytest.approx(0.7))]
    assert highlight_terminal(text, words, 1) == "<i>not</i> [good]"
    page = highlight_html(text, words)
    assert "&lt;i&gt;not&lt;/i&gt;" in page and "rgba(255, 170, 0, 1.00)" in page and "<i>" not in page


def test_control_characters_of_a_text_reach_neither_the_page_nor_the_terminal_as_they_are() -> None:
    text = "\x1b]0;title\x07 so \x1b[31mbad\x00\x9b\nreally\tbad"  # a window title, red, NUL, CSI, a new line
    words = word_weights(text, [(11, 13), (19, 22), (25, 31), (32, 35)], [0, 1, 2, 3],
                         torch.tensor([0.1, 0.9, 0.1, 0.2]))
    assert highlight_terminal(text, words, 1) == "\\x1b]0;title\\x07 so \\x1b[31m[bad]\\x00\\x9b\\nreally\tbad"
    page = html_page("\x1btitle", [("in\x07.txt:1", "neg\x7f", 0.9, highlight_html(text, words))])
    assert not re.search("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]", page)  # none HTML allows (tab, new line: kept)
    assert ">\ufffdtitle<" in page and "in\ufffd.txt:1" in page and "neg\ufffd" in page
    assert "\ufffd]0;title\ufffd <span" in page and "</span> \ufffd[31m<span" in page
    assert "bad</span>\ufffd\ufffd\n<span" in page


def test_subword_words_leave_out_the_space_before_them() -> None:
    # a byte-level BPE or unigram tokenizer counts the space before a word as its first character
    text = "Great movie, great fun"
    words = word_weights(text, [(0, 5), (5, 11), (11, 12), (12, 18), (18, 22)], [0, 1, 2, 3, 4],
                         torch.tensor([0.9, 0.1, 0.0, 0.8, 0.2]))
    assert [text[w.start:w.end] for w in words] == ["Great", "movie,", "great", "fun"]  # "movie" and "," touch
    assert top_words(text, words, 3) == ["Great", "fun", "movie"]  # "great" is "Great" again


def test_a_word_the_tokenizer_splits_at_its_apostrophe_is_one_word() -> None:
    text = "it's dull"  # the word tokenizer's words: it ' s dull
    words = word_weights(text, [(0, 2), (2, 3), (3, 4), (5, 9)], [0, 1, 2, 3], torch.tensor([0.1, 0.1, 0.5, 0.2]))
    assert words == [Word(0, 4, pytest.approx(0.7)), Word(5, 9, pytest.approx(0.2))]
    assert top_words(text, words, 1) == ["it's"]


def test_top_words_are_distinct_words_without_punctuation() -> None:
    text = "awful script , script ."
    words = [Word(0, 5, 0.5), Word(6, 12, 0.9), Word(13, 14, 0.8), Word(15, 21, 0.7), Word(22, 23, 0.6)]
    assert top_words(text, words, 3) == ["script", "awful"]
    assert top_words(text, words, 1) == ["script"]
    assert highlight_terminal(text, words, 3) == "[awful] [script] , script ."  # the same words as the CSV
    against = [Word(0, 5, -1.5), Word(6, 12, 0.9)]  # a word that weighs against the label is not listed
    assert top_words(text, against, 3) == ["script"]
    markup = "a <b>wonderful</b> well-made film.</p><p>It's 3.5 stars"  # markup and inner punctuation
    chunks = [Word(m.start(), m.end(), 1.0 / (i + 1)) for i, m in enumerate(re.finditer(r"\S+", markup))]
    assert top_words(markup, chunks, 6) == ["a", "wonderful", "well-made", "film", "3.5", "stars"]
    assert top_words("It's IT'S", [Word(0, 4, 0.5), Word(5, 9, 0.9)], 2) == ["IT'S"]  # one word, at its heaviest
    assert highlight_terminal(markup, chunks[1:2], 1) == "a <b>[wonderful]</b> well-made film.</p><p>It's 3.5 stars"


def test_top_words_of_a_subword_tokenizer_leave_out_the_punctuation_around_them() -> None:
    text = 'great, really "great" film. Great!'  # a subword tokenizer's words: the space-separated chunks
    words = [Word(0, 6, 0.9), Word(7, 13, 0.1), Word(14, 21, 0.8), Word(22, 27, 0.5), Word(28, 34, 0.7)]
    assert top_words(text, words, 3) == ["great", "film", "really"]
    assert highlight_terminal(text, words, 2) == '[great], really "great" [film]. Great!'


def test_a_word_against_the_label_is_shaded_in_its_own_colour() -> None:
    page = highlight_html("dull but fun", [Word(0, 4, -0.8), Word(5, 8, 0.1), Word(9, 12, 0.4)])
    assert 'rgba(70, 130, 255, 1.00)" title="-0.800">dull' in page
    assert 'rgba(255, 170, 0, 0.50)" title="0.400">fun' in page


def test_the_explanation_page_escapes_its_title_lines_labels_and_texts() -> None:
    shown = highlight_html("a <b>great</b> & fun", [Word(2, 14, 0.8), Word(17, 20, 0.4)])
    assert shown.startswith("a <span") and "</span> &amp; <span" in shown and "<b>" not in shown
    page = html_page("<stdin> & more", [("<stdin>:1", "<pos>", 0.9, shown)])
    assert "<stdin>" not in page and page.count("&lt;stdin&gt; &amp; more") == 2  # the title and the heading
    assert "<td>&lt;stdin&gt;:1</td><td>&lt;pos&gt;</td><td>0.900</td>" in page and shown in page


def test_label_sentence_lines_and_integer_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stsa.train"
    path.write_text("1 a fine film\n0 a weak plot\n\n10\n2 more\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        examples = read_labelled(path)
    assert [(e.label, e.text) for e in examples] == [("1", "a fine film"), ("0", "a weak plot"), ("2", "more")]
    assert f"{path}:3: empty text; skipped" in caplog.text and f"{path}:4: empty text; skipped" in caplog.text
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"1 a fine film\n0\n")))
    assert [e.where for e in read_labelled("-")] == ["<stdin>:1"]  # stdin is named so (was "-:1")
    assert "<stdin>:2: empty text; skipped" in caplog.text
    path.write_text("".join(f"{label} text number {i}\n" for i in range(10) for label in (10, 2, 0)))
    cfg = compose_train_config("sentiment", [*TINY, f"task.data.train={path}", "task.data.val=null",
                                             "task.data.test=null", "task.data.val_fraction=0.2"], tmp_path)
    task = run.build_task(cfg.task)
    data = task.datamodule()
    assert task.labels == ["0", "2", "10"]  # integer labels in numeric order
    assert "occurs only once" not in caplog.text
    with path.open("a") as lines:
        lines.write("the sentence lost its label\n")
    with caplog.at_level(logging.WARNING):
        run.build_task(cfg.task).datamodule()
    assert f"{path}:31: label 'the' occurs only once in training" in caplog.text
    caplog.clear()
    path.write_text("".join(f"{int(i < 3)} text number {i}\n" for i in range(30)))  # label 1 on three lines
    rare = compose_train_config("sentiment", [*TINY, f"task.data.train={path}", "task.data.val=null",
                                              "task.data.test=null", "task.data.val_fraction=0.9"], tmp_path)
    with caplog.at_level(logging.WARNING):
        held_out = run.build_task(rare.task).datamodule()
    assert [e.label for e in held_out.dataset("train").examples].count("1") == 1  # the others held out
    assert "occurs only once" not in caplog.text  # in the file it does not
    assert len(data.dataset("train")) == 24 and len(data.dataset("val")) == len(data.dataset("test")) == 6


def test_tables_are_known_by_suffix_in_any_case_and_texts_are_read_as_one_line(tmp_path: Path) -> None:
    # and a label's surrounding spaces are not part of it
    (tmp_path / "UP.CSV").write_text('text,label\n"great\tfilm,\nreally",positive\nawful film, negative \n')
    examples = read_labelled(tmp_path / "UP.CSV")
    assert [(e.text, e.label) for e in examples] == [("great film, really", "positive"), ("awful film", "negative")]
    (tmp_path / "Z.CSV.GZ").write_bytes(gzip.compress((tmp_path / "UP.CSV").read_bytes()))
    assert read_labelled(tmp_path / "Z.CSV.GZ") == [replace(e, where=e.where.replace("UP.CSV", "Z.CSV.GZ"))
                                                   for e in examples]


def test_stdin_is_read_as_a_table_when_its_format_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'id,review\n1,"a superb, moving film"\n2,dull\n')))
    assert [e.text for e in read_texts("-", "csv", "review")] == ["a superb, moving film", "dull"]


def test_training_texts_from_stdin_are_named_as_stdin_when_their_share_is_tested(tmp_path: Path, monkeypatch,
                                                                                 caplog) -> None:
    lines = "".join(f"{i % 2} {'good' if i % 2 else 'bad'} film {i}\n" for i in range(20))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines.encode())))
    cfg = compose_train_config("sentiment", [*TINY, "task.data.train=-", "task.data.val=null", "task.data.test=null"],
                               tmp_path)
    with caplog.at_level(logging.WARNING):
        run.build_task(cfg.task).datamodule().dataset("test")
    assert "no task.data.test or task.data.val: testing on the validation share of <stdin>" in caplog.text


def test_integer_labels_have_one_order_and_a_validation_share_leaves_training_texts(tmp_path: Path) -> None:
    assert label_order(["1", "01", "2", "0"]) == ["0", "01", "1", "2"]
    assert label_order(["1", "\u00b2"]) == ["1", "\u00b2"]  # a superscript is no integer: text order
    assert label_order(["-1", "--1", "1"]) == ["--1", "-1", "1"]  # nor is "--1" (it was int()'s ValueError)
    assert label_order(["-1", "-2", "0"]) == ["-2", "-1", "0"]
    path = tmp_path / "two.txt"
    path.write_text("1 good\n0 bad\n")
    overrides = [*TINY, f"task.data.train={path}", "task.data.val=null", "task.data.test=null"]
    with pytest.raises(UserError, match=r"two.txt: 2 labelled texts, too few to hold out a validation share and "
                                        r"keep every label in training"):  # one of two held out: one label lost
        run.build_task(compose_train_config("sentiment", [*overrides, "task.data.val_fraction=0.9"],
                                            tmp_path).task).datamodule()
    path.write_text("".join(f"{label} text {i}\n" for i, label in enumerate(["1"] * 5 + ["0"] * 4 + ["2"])))
    for seed in range(5):  # 9 of the 10 held out: a rare label drawn wholly into them keeps one training text
        task = run.build_task(compose_train_config(
            "sentiment", [*overrides, "task.data.val_fraction=0.9", f"task.data.split_seed={seed}"], tmp_path).task)
        data = task.datamodule()  # a label missing from training: "not seen in training" in the validation share
        assert task.state["labels"] == ["0", "1", "2"]
        trained, held = ({e.text for e in data.dataset(stage).examples} for stage in ("train", "val"))
        assert not trained & held and len(trained | held) == 10  # each text on one side only
    path.write_text("1 good\n")
    with pytest.raises(UserError, match=r"two.txt: one labelled text, too few to hold out a validation share"):
        run.build_task(compose_train_config("sentiment", overrides, tmp_path).task).datamodule()
    path.write_text("".join(f"{i} text {i}\n" for i in range(30)))  # the label column holds ids
    with pytest.raises(UserError, match=r"two.txt: 30 labelled texts, too few to hold out a validation share and "
                                        r"keep every label in training \(give task.data.val\); each has a label of "
                                        r"its own: is task.data.label_column=label a column of texts or ids\?$"):
        run.build_task(compose_train_config("sentiment", overrides, tmp_path).task).datamodule()


def test_bad_input_is_named_by_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = write_csv(tmp_path / "t.csv", [("good", "pos"), ("", "neg"), ("dull", ""), ("bad", "neg")])
    with caplog.at_level(logging.WARNING):
        assert [e.text for e in read_labelled(table)] == ["good", "bad"]
    assert f"{table}:3: empty text; skipped" in caplog.text and f"{table}:4: no label for 'dull'" in caplog.text
    expected = r"t.csv:1: no column 'sentence' \(task.data.text_column\); the columns are \['text', 'label'\]"
    with pytest.raises(UserError, match=expected):
        read_labelled(table, text_column="sentence")
    with pytest.raises(UserError, match=r"t.csv:1: no column 'review' \(task.data.text_column\); the columns are"):
        read_texts(table, column="review")
    broken = tmp_path / "broken.tsv"
    broken.write_bytes(b"sentence\tlabel\nfine\t1\nbad \xff byte\t0\n")
    with pytest.raises(UserError, match=r"broken.tsv:3: not UTF-8"):
        read_labelled(broken, text_column="sentence")

    unseen = write_csv(tmp_path / "val.csv", [("good", "pos"), ("meh", "neutral")])
    train = write_csv(tmp_path / "train.csv", separable(40, 3))
    cfg = compose_train_config("sentiment", [*TINY, f"task.data.train={train}", f"task.data.val={unseen}",
                                             "task.data.test=null"], tmp_path)
    data = run.build_task(cfg.task).datamodule()
    with pytest.raises(UserError, match=r"val.csv:3: label 'neutral' was not seen in training \(the model knows"):
        data.setup("fit")  # as training starts: before the model summary and any model's work
    cfg = compose_train_config("sentiment", [*TINY, f"task.data.train={train}", "task.data.val=null",
                                             f"task.data.test={unseen}"], tmp_path)
    with pytest.raises(UserError, match=r"val.csv:3: label 'neutral' was not seen in training"):
        run.build_task(cfg.task).datamodule()  # the test file is checked before training, not after it
    for override, message in [(f"task.predict.input={tmp_path / 'nope.txt'}", "nope.txt: no such file"),
                              (f"task.predict.input={tmp_path}",
                               f"task.predict.input: {tmp_path}: a folder, not a file"),
                              ("task.predict.importance=bogus", "task.predict.importance must be one of")]:
        own = [f"task.data.train={train}", "task.data.val=null", "task.data.test=null"]
        cfg = compose_train_config("sentiment", [*TINY, *own, override], tmp_path)
        with pytest.raises(UserError, match=re.escape(message)):
            run.build_task(cfg.task).datamodule()


def test_bundled_corpus_is_deterministic_with_three_labels() -> None:
    first, second = corpus_files(), corpus_files()
    assert list(first) == ["train.csv", "val.csv", "test.csv"]
    assert all(first[name].equals(second[name]) for name in first)
    assert set(first["train.csv"]["label"]) == {"negative", "neutral", "positive"}


def test_sentiment_honours_the_plugin_contract(corpus: dict[str, Path], tmp_path: Path) -> None:
    # with adversarial training on, so its training step runs through Lightning too
    # and standardised embeddings, whose word frequencies the checkpoint's state must carry to its restored model
    check_task_plugin("sentiment", [*TINY, *data_overrides(corpus), "task.model.adversarial_eps=1", "logger=csv",
                                    "task.model.normalize_embeddings=true", "task.model.virtual_adversarial_eps=1"],
                      tmp_path)
    restored = load_checkpoint(next(tmp_path.rglob("last.ckpt"))).task.model
    assert restored.word_frequencies is not None and restored.word_frequencies.sum().item() == pytest.approx(1)
    logged = {name for path in tmp_path.rglob("metrics.csv") for name in path.read_text().splitlines()[0].split(",")}
    assert {"train/adv_loss", "train/vat_loss"} <= logged  # both ran (they are skipped where no gradient flows)


def predicted_probabilities(folder: Path) -> dict[str, float]:
    """`prob_pos` per text of a `predictions.csv` in `folder`."""
    with (folder / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        return {row["text"]: float(row["prob_pos"]) for row in csv.DictReader(handle)}


def test_predict_cli_averages_an_ensemble_of_checkpoints(trained: tuple[Path, dict[str, float]],
                                                         corpus: dict[str, Path], tmp_path: Path,
                                                         one_thread: None) -> None:
    import pytorch_lightning as pl

    from gru_suite.checkpoint import load_checkpoint

    other = tmp_path / "other"  # another tokenizer: the two models split the texts into different tokens
    run.train(compose_train_config("sentiment", [*TINY, *data_overrides(corpus), "trainer.max_epochs=1", "seed=1",
                                                 "task.tokenizer.kind=bpe", "task.tokenizer.vocab_size=60",
                                                 "predict_after_training=false"], other))
    paths = [trained[0] / "checkpoints" / "last.ckpt", other / "checkpoints" / "last.ckpt"]
    alone, tokens = [], []
    for n, path in enumerate(paths):
        module = load_checkpoint(path)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        artifacts.write_artifacts(trainer, module, module.task.datamodule(), tmp_path / f"alone{n}")
        alone.append(predicted_probabilities(tmp_path / f"alone{n}"))
        tokens.append([len(ids) for ids in module.task.encode(list(alone[0]))])
    assert tokens[0] != tokens[1]
    assert max(abs(alone[0][t] - alone[1][t]) for t in alone[0]) > 0.05  # two different models

    texts = [text for text, _ in separable(80, 2)]  # the test corpus again, read once from stdin
    result = run_with_stdin("gru-suite-predict", "task=sentiment", f"ckpt_path={paths[0]}", f"ensemble=[{paths[1]}]",
                            "task.predict.input=-", f"hydra.run.dir={tmp_path / 'both'}", text="\n".join(texts))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fixed by training" not in result.stdout + result.stderr  # nothing overridden, nothing to warn about
    both = predicted_probabilities(tmp_path / "both")
    assert list(both) == list(alone[0])
    assert all(both[t] == pytest.approx((alone[0][t] + alone[1][t]) / 2, abs=2e-6) for t in both)


def test_an_ensemble_member_reads_the_first_models_texts_and_needs_its_labels(
        trained: tuple[Path, dict[str, float]]) -> None:
    from gru_suite.checkpoint import load_checkpoint

    module = load_checkpoint(trained[0] / "checkpoints" / "last.ckpt")
    stranger = load_checkpoint(trained[0] / "checkpoints" / "last.ckpt")
    stranger.task.state["labels"] = ["neg", "neutral", "pos"]
    with pytest.raises(UserError, match=r"its labels \['neg', 'neutral', 'pos'\] differ from the first model's "
                                        r"\['neg', 'pos'\]"):
        stranger.task.ensemble_input(module.task, module.task.datamodule())
    member = load_checkpoint(trained[0] / "checkpoints" / "last.ckpt")
    data = member.task.ensemble_input(module.task, module.task.datamodule())
    assert member.task.cfg.predict.importance == "pooling"  # an ensemble member skips the backward pass
    assert data.dataset("predict").examples == module.task.datamodule().dataset("predict").examples


def test_an_ensembles_bad_input_is_named_as_the_inputs_fault(trained: tuple[Path, dict[str, float]],
                                                            tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from gru_suite.checkpoint import load_checkpoint

    (bad := tmp_path / "bad.txt").write_bytes(b"a fine film\n\xff\xfe awful\n")
    first, member = (load_checkpoint(trained[0] / "checkpoints" / "last.ckpt") for _ in range(2))
    first.task.cfg.predict.input = str(bad)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(UserError, match=rf"^{re.escape(str(bad))}:2: not UTF-8"):  # not the member's: no prefix
        run.ensemble_predictions(trainer, first, first.task.datamodule(), "a.ckpt", [("b.ckpt", member)])


def test_a_distilled_model_follows_its_teachers_over_the_labels(trained: tuple[Path, dict[str, float]],
                                                               corpus: dict[str, Path], tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    teacher = trained[0] / "checkpoints" / "last.ckpt"
    flipped = write_csv(tmp_path / "flipped.csv", [(text, {"pos": "neg", "neg": "pos"}[label])
                                                   for text, label in separable(400, 0)])
    common = [*TINY, *data_overrides(corpus), f"task.data.train={flipped}", "trainer.max_epochs=4",
              "optimizer.lr=1e-2", "predict_after_training=false", f"task.report_dir={tmp_path}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = run.train(compose_train_config("sentiment", common, tmp_path / "alone"))
        with caplog.at_level(logging.INFO):
            taught = run.train(compose_train_config("sentiment", [*common, f"task.distill.teachers={teacher}",
                                                                  "task.distill.weight=1.0",
                                                                  "task.model.adversarial_eps=1"], tmp_path / "taught"))
    finally:
        torch.set_num_threads(threads)
    assert alone["test/acc"] < 0.1  # the flipped labels, learned
    assert taught["test/acc"] > 0.9  # the teacher's labels, learned instead, by the adversarial copies too
    agreement = re.search(r"distilling 1 teachers: their mean probabilities pick the given label of ([\d.]+)% "
                          r"of the 400 training texts", caplog.text)
    assert agreement and float(agreement[1]) < 5  # the teacher learned the true labels


def test_altered_copies_drop_words_or_keep_a_short_run_of_them() -> None:
    rng, text = random.Random(0), "one two three four five six seven eight"
    assert altered_copy(text, 0.0, 0.0, rng) == text
    assert altered_copy(text, 1.0, 0.0, rng) in text.split()  # never empty
    runs = [altered_copy(text, 0.0, 1.0, rng) for _ in range(200)]
    assert all(run in text and 1 <= len(run.split()) <= 5 for run in runs)
    assert {len(run.split()) for run in runs} == {1, 2, 3, 4, 5}
    dropped = [altered_copy(text, 0.5, 0.0, rng).split() for _ in range(200)]
    assert all(words == [w for w in text.split() if w in words] for words in dropped)  # order kept
    assert 3 < sum(map(len, dropped)) / len(dropped) < 5


def test_teachers_label_the_altered_copies(trained: tuple[Path, dict[str, float]], corpus: dict[str, Path],
                                           tmp_path: Path) -> None:
    teacher = trained[0] / "checkpoints" / "last.ckpt"
    cfg = compose_train_config("sentiment", [*TINY, *data_overrides(corpus), f"task.distill.teachers=[{teacher}]",
                                             "task.distill.copies=2", "task.distill.ngram=0.5"], tmp_path)
    task = run.build_task(cfg.task)
    texts = task.datamodule().dataset("train")
    assert len(texts) == 3 * 400 and task._soft_targets.shape == (1200, 2)
    copies = texts.examples[400:]
    assert copies[0].where.endswith("train.csv:2 (copy 1)") and copies[400].where.endswith("train.csv:2 (copy 2)")
    assert [e.text for e in copies] != [e.text for e in texts.examples[:400]] * 2
    assert texts.labels[400:] == task._soft_targets[400:].argmax(1).tolist()  # the teachers' choice
    torch.testing.assert_close(task._soft_targets.sum(1), torch.ones(1200))
    polar = [e.label == ("pos" if set(e.text.split()) & set(GOOD) else "neg") for e in copies
             if set(e.text.split()) & set(GOOD + BAD)]
    assert sum(polar) / len(polar) > 0.95  # copies that kept their polar word keep its label


def test_adversarial_copies_are_scored_against_the_teachers_too(trained: tuple[Path, dict[str, float]],
                                                                corpus: dict[str, Path], tmp_path: Path) -> None:
    teacher = trained[0] / "checkpoints" / "last.ckpt"
    flipped = write_csv(tmp_path / "flipped.csv", [(text, {"pos": "neg", "neg": "pos"}[label])
                                                   for text, label in separable(100, 0)])
    cfg = compose_train_config("sentiment", [*TINY, *data_overrides(corpus), f"task.data.train={flipped}",
                                             f"task.distill.teachers=[{teacher}]", "task.distill.weight=1.0",
                                             "task.model.adversarial_eps=1e-6", "task.model.dropout=0"], tmp_path)
    task = run.build_task(cfg.task)
    data = task.datamodule()
    module = run.build_module(cfg, task)
    batch = data.dataset("train").__getitems__(list(range(16)))
    out = task.step(module.model, batch, "train")
    # a vanishing move: the copies' loss is the texts' own, against the teachers (not the flipped labels)
    assert out.metrics["adv_loss"].item() == pytest.approx(out.metrics["distill_loss"].item(), rel=1e-4)
    assert out.loss.item() == pytest.approx(2 * out.metrics["distill_loss"].item(), rel=1e-4)


def test_the_virtual_adversarial_loss_is_added_in_training_only(corpus: dict[str, Path], tmp_path: Path) -> None:
    cfg = compose_train_config("sentiment", [*TINY, *data_overrides(corpus), "task.model.dropout=0"], tmp_path)
    task = run.build_task(cfg.task)
    batch = task.datamodule().dataset("train").__getitems__(list(range(16)))
    module = run.build_module(cfg, task)
    plain = task.step(module.model, batch, "train")
    task.cfg.model.virtual_adversarial_eps = 1.0
    trained, scored = task.step(module.model, batch, "train"), task.step(module.model, batch, "val")
    assert trained.metrics["vat_loss"].item() > 0 and "vat_loss" not in scored.metrics
    assert trained.loss.item() == pytest.approx(plain.loss.item() + trained.metrics["vat_loss"].item(), rel=1e-5)
    assert scored.loss.item() == pytest.approx(plain.loss.item(), rel=1e-5)


def test_teachers_are_checked_before_training(trained: tuple[Path, dict[str, float]], corpus: dict[str, Path],
                                              tmp_path: Path) -> None:
    teacher, missing = trained[0] / "checkpoints" / "last.ckpt", tmp_path / "missing.ckpt"
    other_labels = write_csv(tmp_path / "abc.csv", [(text, {"pos": "a", "neg": "b"}[label])
                                                    for text, label in separable(60, 3)])
    base = [*TINY, *data_overrides(corpus)]
    for overrides, message in (
        ([f"task.distill.teachers=[{missing}]"], f"task.distill.teachers: {missing}: no such file"),
        ([f"task.distill.teachers=[{teacher}]", f"task.data.train={other_labels}", "task.data.val=null",
          "task.data.test=null"],
         (rf"task.distill.teachers: {teacher} holds a model of labels \['neg', 'pos'\]; a teacher must know the "
          rf"training labels \['a', 'b'\]")),
        (["task.distill.weight=1.5"], "task.distill.weight"),
        (["task.distill.copies=1"], "task.distill.copies: altered copies are labelled by teachers"),
    ):
        with pytest.raises(UserError, match=message):
            run.build_task(compose_train_config("sentiment", [*base, *overrides], tmp_path).task).datamodule()


def test_averaged_weights_are_calibrated_saved_and_tested(corpus: dict[str, Path], tmp_path: Path) -> None:
    from gru_suite.checkpoint import load_checkpoint

    # every tenth validation label wrong: texts a model cannot all get right leave a temperature to fit
    noisy = [(text, {"pos": "neg", "neg": "pos"}[label] if i % 10 == 0 else label)
             for i, (text, label) in enumerate(separable(80, 1))]
    corpus = {**corpus, "val": write_csv(tmp_path / "val.csv", noisy)}
    cfg = compose_train_config("sentiment", [*TINY, *data_overrides(corpus), "trainer.max_epochs=3",
                                             "optimizer.lr=1e-2",  # and predictions after training, as by default
                                             "callbacks.ema={_target_: gru_suite.callbacks.EMAWeights, decay: 0.9}"],
                               tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = run.train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
    path = next((tmp_path / "checkpoints").glob("best-*.ckpt"))
    stored = torch.load(path, map_location="cpu", weights_only=False)
    averaged, raw = stored["state_dict"], stored["current_model_state"]
    assert not torch.equal(averaged["model.head.weight"], raw["model.head.weight"])
    temperature = float(averaged["model.temperature"])
    assert temperature != pytest.approx(float(raw["model.temperature"]))
    assert metrics["test/temperature"] == pytest.approx(temperature)  # testing read the averaged weights

    module = load_checkpoint(path)  # as gru-suite-predict reads it
    val = read_labelled(corpus["val"])
    with torch.inference_mode():
        logits, _ = module.model(*pad_ids(module.task.encode([e.text for e in val])))
    labels = torch.tensor([module.task.labels.index(e.label) for e in val])
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=1e-4)  # fitted to the averaged weights
    probs = module.task.probabilities([e.text for e in val])
    assert torch.allclose(probs, (logits / temperature).softmax(-1), atol=1e-6)


def test_a_resumed_run_draws_the_length_buckets_of_a_run_never_stopped(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "a.csv", separable(96, seed=0))
    val = write_csv(tmp_path / "val.csv", separable(32, seed=1))
    data = [f"task.data.train={train}", f"task.data.val={val}", f"task.data.test={val}"]
    resumed, uninterrupted = resumed_and_uninterrupted("sentiment", [*TINY, *data], tmp_path)
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)


def test_a_run_resumed_part_way_through_an_epoch_trains_the_epochs_other_length_buckets(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "a.csv", separable(160, seed=0))
    val = write_csv(tmp_path / "val.csv", separable(32, seed=1))
    data = [f"task.data.train={train}", f"task.data.val={val}", f"task.data.test={val}", "task.data.batch_size=32"]
    resumed, uninterrupted = resumed_part_way_and_uninterrupted("sentiment", [*TINY, *data], tmp_path)
    weights = uninterrupted["state_dict"]
    assert all(torch.equal(resumed["state_dict"][name], weights[name]) for name in weights)


def test_resuming_on_other_texts_keeps_the_checkpoints_vocabulary_and_labels(tmp_path: Path, caplog) -> None:
    quiet = [*TINY, "threads=1", "test_after_training=false", "predict_after_training=false",
             "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    train = write_csv(tmp_path / "a.csv", separable(64, seed=0))
    val = write_csv(tmp_path / "val.csv", separable(32, seed=1))
    data = [f"task.data.val={val}", f"task.data.test={val}"]
    run.train(compose_train_config("sentiment", [*quiet, *data, f"task.data.train={train}", "trainer.max_epochs=1"],
                                   tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=False)["gru_suite"]["task_state"]
    other = write_csv(tmp_path / "b.csv", [(f"{text} nothing else matters here", label)
                                           for text, label in separable(64, seed=2)])  # new words
    trained_tokenizer = dict(torch.load(last, weights_only=False)["gru_suite"]["config"]["task"]["tokenizer"])
    with caplog.at_level(logging.WARNING):
        run.train(compose_train_config("sentiment", [*quiet, *data, f"task.data.train={other}", "trainer.max_epochs=2",
                                                     "task.tokenizer.vocab_size=50", f"ckpt_path={last}"],
                                       tmp_path / "run"))
    after = torch.load(last, weights_only=False)
    assert after["epoch"] >= 1 and after["gru_suite"]["task_state"] == before  # token ids still mean their words
    assert "task.tokenizer fixed by training: the checkpoint's settings are used, not this run's" in caplog.text
    assert dict(after["gru_suite"]["config"]["task"]["tokenizer"]) == trained_tokenizer  # what made the vocabulary


def test_a_checkpoint_older_than_a_trained_setting_counts_as_trained_with_its_default(tmp_path: Path, caplog) -> None:
    quiet = [*TINY, "threads=1", "test_after_training=false", "predict_after_training=false",
             "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    run.train(compose_train_config("sentiment", [*quiet, "trainer.max_epochs=1"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    del checkpoint["gru_suite"]["config"]["task"]["model"]["normalize_embeddings"]  # saved before the setting existed
    torch.save(checkpoint, last)
    stored = stored_config(checkpoint).task
    default = compose_train_config("sentiment", quiet, tmp_path / "default").task
    assert fixed_by_training(["model.normalize_embeddings"], default, stored) == []  # the default: nothing to say
    assert fixed_by_training(["model.normalize_embeddings"], stored, stored) == []  # eval: the stored config, as is
    with caplog.at_level(logging.WARNING):
        run.train(compose_train_config("sentiment", [*quiet, "trainer.max_epochs=2", "ckpt_path=last",
                                                     "task.model.normalize_embeddings=true"], tmp_path))
    assert "task.model.normalize_embeddings fixed by training: the checkpoint's settings are used" in caplog.text
    after = torch.load(last, weights_only=False)
    assert after["epoch"] == 1 and "word_counts" not in after["gru_suite"]["task_state"]
    assert after["gru_suite"]["config"]["task"]["model"]["normalize_embeddings"] is False  # what the model is


def test_gate_plots_name_the_text_and_label_its_tokens(trained, tmp_path: Path, monkeypatch) -> None:
    from gru_suite import gates

    texts = tmp_path / "texts.txt"
    texts.write_text("a dull lifeless sequel\nthe ending is great and the film was good\n", encoding="utf-8")
    module = load_checkpoint(trained[0] / "checkpoints" / "last.ckpt")
    module.task.cfg.predict.input = str(texts)
    drawn: list = []
    monkeypatch.setattr(gates, "save_figure", lambda figure, path: drawn.append(figure) or path)
    view, _ = gates.plot_model_gates(module, tmp_path, sample=1)
    line, text = next((f"{texts}:{n}", t) for n, t in enumerate(texts.read_text().splitlines(), 1) if t in view.title)
    assert view.title == f"{line}: {text}"
    assert drawn[0].get_suptitle().startswith(f"GRU gates: layer 0, {line}: ")  # long titles are shortened
    tokenizer = module.task.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert list(view.steps) == tokens
    assert [label.get_text() for label in drawn[0].axes[3].get_xticklabels()] == tokens  # the 4th (last) heat map


def test_own_training_texts_beside_the_bundled_validation_and_test_files_are_refused(tmp_path: Path) -> None:
    own = tmp_path / "reviews.csv"
    own.write_text("review,stars\n" + "fine,1\nawful,0\n" * 5)  # the bundled files lack these columns
    cfg = compose_train_config("sentiment", [*TINY, f"task.data.train={own}", "task.data.text_column=review",
                                             "task.data.label_column=stars"], tmp_path)
    with pytest.raises(UserError, match=r"task.data.train is data of your own \(.*reviews.csv\), but task.data.val, "
                                        r"task.data.test are left at the bundled demo data in .*: give task.data.val, "
                                        r"or null to hold out .*; task.data.test, or null to test on the validation"):
        run.build_task(cfg.task).datamodule()
    cfg.task.data.val = cfg.task.data.test = None  # a held-out share of the own texts, and testing on it
    run.build_task(cfg.task).datamodule()


def test_a_missing_prediction_column_names_the_setting_that_chose_it(trained, tmp_path: Path) -> None:
    reviews = write_csv(tmp_path / "reviews.csv", [("x", "a superb film")], header=("id", "review"))
    task = load_checkpoint(trained[0] / "checkpoints" / "last.ckpt").task
    task.cfg.predict.input = str(reviews)
    for column, named in ((None, "'text' (task.data.text_column; task.predict.column chooses the prediction input's)"),
                          ("stars", "'stars' (task.predict.column)")):
        task.cfg.predict.column = column
        expected = f"{reviews}:1: no column {named}; the columns are ['id', 'review']"
        with pytest.raises(UserError, match=re.escape(expected)):
            task.datamodule().setup("predict")
