"""The translation task: tokenizers, attention masking, decoding, learning, bad input, CLI and the plugin contract."""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import re
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from conftest import run_forked
from gru_suite import run
from gru_suite.backbone import GRUBackbone
from gru_suite.checkpoint import load_checkpoint
from gru_suite.errors import UserError
from gru_suite.testing import check_task_plugin, compose_train_config
from gru_suite.text import PAD_ID, pad_ids, readable_pieces
from gru_suite_plugins.translation.data import Corpus, Encoder, PairSet, read_parallel, read_source_text
from gru_suite_plugins.translation import decode
from gru_suite_plugins.translation.decode import BOS, EOS, beam_search, greedy, max_lengths
from gru_suite_plugins.translation.model import Memory, Seq2Seq
from gru_suite_plugins.translation.synth import corpus_files
from gru_suite_plugins.translation.task import TranslationTask, corpus_scores, split_sentences
from gru_suite_plugins.translation.writer import LABELLED_PIECES, MAX_INCHES, plot_alignment, write_lines

TINY = ["backbone.hidden_size=16", "task.model.embed_size=16", "task.tokenizer.vocab_size=200",
        "task.decode.beam_size=2", "task.decode.max_length=20", "task.data.batch_size=32"]


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled corpus, cut to 400 training pairs and 40 for val/test."""
    folder = tmp_path_factory.mktemp("toy")
    for name, text in corpus_files().items():
        keep = 400 if name.startswith("train") else 40
        (folder / name).write_text("".join(text.splitlines(keepends=True)[:keep]), encoding="utf-8")
    return folder


def tiny_model(vocab: int, seed: int = 0, **kwargs) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(partial(GRUBackbone, hidden_size=24), vocab, vocab, 16, **kwargs).eval()


def test_tokenizers_round_trip_the_text_and_ride_in_the_state(bundled: Path, tmp_path: Path) -> None:
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY], tmp_path)
    task = TranslationTask(cfg.task)
    task.datamodule()
    restored = TranslationTask(cfg.task, state=task.state_dict())
    restored.datamodule()
    for text in ["Some green old women know a green farmer.", "Kelka donas virdas vetas konant."]:
        ids = restored.source_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert restored.source_tokenizer.unk_token_id not in ids
        assert restored.source_tokenizer.decode(ids) == text
    assert task.state["source_tokenizer"] == task.state["target_tokenizer"]  # joint vocabulary by default
    model = task.build_model(partial(GRUBackbone, hidden_size=8))
    assert model.source_embed is model.target_embed and model.out.weight is model.target_embed.weight


def test_a_lowercasing_tokenizer_is_scored_case_insensitively(bundled: Path, tmp_path: Path) -> None:
    for lowercase in (False, True):
        cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY,
                                                   f"task.tokenizer.lowercase={lowercase}"], tmp_path)
        task = TranslationTask(cfg.task)
        references = task.datamodule().dataset("val").references  # scored as written, not as tokenized
        assert references == (bundled / f"val.{cfg.task.data.target}").read_text(encoding="utf-8").splitlines()
        reference = "Some green old women know a green farmer."
        hypothesis = task.detokenize(task.target_tokenizer(reference, add_special_tokens=False)["input_ids"])
        assert task.lowercase == lowercase and (hypothesis == reference) != lowercase
        task._scores["val"] = {0: (hypothesis, reference, 1.0, 9)}  # what a validation epoch collects
        scores = task.epoch_end("val")
        assert scores["bleu"] == pytest.approx(100) and scores["chrf"] == pytest.approx(100)  # a perfect translation
        assert ("case:lc" in corpus_scores([hypothesis], [reference], lowercase)["bleu_signature"]) == lowercase


def test_validation_and_testing_decode_with_their_own_beams(bundled: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY, "task.decode.val_beam_size=1",
                                               "task.decode.beam_size=3"], tmp_path)
    task = TranslationTask(cfg.task)
    batch = task.datamodule().dataset("val").__getitems__([0, 1])
    model = task.build_model(partial(GRUBackbone, hidden_size=8))
    beams: list[int] = []
    monkeypatch.setattr(task, "translate", lambda model, batch, beam: beams.append(beam) or [])
    task.step(model, batch, "val")
    task.step(model, batch, "test")
    assert beams == [1, 3]


def test_a_batch_feeds_the_decoder_each_target_token_after_the_one_it_predicts() -> None:
    pairs = PairSet([[5, 6, EOS], [7, EOS]], [[8, 9, 10, EOS], [11, EOS]], ["a b c", "d"], BOS)
    batch = pairs.__getitems__([0, 1])
    assert batch["target_in"].tolist() == [[BOS, 8, 9, 10], [BOS, 11, PAD_ID, PAD_ID]]
    assert batch["target_out"].tolist() == [[8, 9, 10, EOS], [11, EOS, PAD_ID, PAD_ID]]
    assert batch["target_lengths"].tolist() == [4, 2] and batch["references"] == ["a b c", "d"]


def test_a_translation_holding_a_line_break_stays_on_its_input_line(tmp_path: Path) -> None:
    path = write_lines(["one\ntwo", "", "three\r\nfour"], tmp_path / "out.txt")
    assert path.read_text(encoding="utf-8") == "one two\n\nthree four\n"


def test_bleu_tokenizes_as_sacrebleu_does_for_the_target_language(caplog: pytest.LogCaptureFixture) -> None:
    hypothesis, reference = "我们今天去公园玩了", "我们今天去公园玩"  # Chinese is written without spaces
    assert corpus_scores([hypothesis], [reference])["bleu"] == 0  # 13a: one word each, and they differ
    chinese = corpus_scores([hypothesis], [reference], language="zh")
    assert chinese["bleu"] > 50 and "tok:zh" in chinese["bleu_signature"]
    assert "tok:13a" in corpus_scores([hypothesis], [reference], language="en")["bleu_signature"]
    for code in ("ZH", "zh-CN", "zh_Hant"):  # a region or script: still Chinese
        assert corpus_scores([hypothesis], [reference], language=code) == chinese
    task = TranslationTask.__new__(TranslationTask)  # a task's warn_once, which its epoch ends pass
    with caplog.at_level(logging.WARNING):  # Japanese needs MeCab (sacrebleu[ja]), not installed here
        japanese = corpus_scores(["今日は公園に行った"], ["今日は公園に行く"], language="ja", warn=task.warn_once)
        corpus_scores(["今日は公園に行った"], ["今日は公園に行く"], language="ja", warn=task.warn_once)  # next epoch's
    assert "tok:char" in japanese["bleu_signature"] or "tok:ja-mecab" in japanese["bleu_signature"]
    assert caplog.text.count("BLEU of ja by character") == ("tok:char" in japanese["bleu_signature"])  # once


def test_the_runs_seed_draws_the_training_batches(bundled: Path, tmp_path: Path) -> None:
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY], tmp_path)
    first = {}
    for seed in (1, 2, 1):
        pl.seed_everything(seed, verbose=False)
        batch = next(iter(TranslationTask(cfg.task).datamodule().train_dataloader()))
        first.setdefault(seed, batch["index"].tolist())
        assert first[seed] == batch["index"].tolist()  # the same seed, the same batches
    assert first[1] != first[2]


def test_separate_vocabularies_give_separate_embeddings(bundled: Path, tmp_path: Path) -> None:
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY, "task.tokenizer.joint=false",
                                               "task.model.tie_embeddings=false"], tmp_path)
    task = TranslationTask(cfg.task)
    task.datamodule()
    assert "donas" not in task.source_tokenizer.get_vocab() and "▁the" in task.source_tokenizer.get_vocab()
    model = task.build_model(partial(GRUBackbone, hidden_size=8))
    assert model.source_embed is not model.target_embed and model.out.weight is not model.target_embed.weight
    assert model.target_embed.num_embeddings == len(task.target_tokenizer)


def test_the_decoders_first_state_is_the_tanh_of_the_bridged_encoder_state_in_every_layer() -> None:
    torch.manual_seed(0)
    model = Seq2Seq(partial(GRUBackbone, hidden_size=8, num_layers=2), 20, 20, 8).eval()
    with torch.no_grad():
        memory = model.encode(*pad_ids([[4, 5, EOS], [6, EOS]]))
        state = model.initial_state(memory)
        assert state.shape == (2, 2, 8) and torch.equal(state[0], state[1])  # every layer
        assert not torch.equal(state[0, 0], state[0, 1])  # each sentence its own
        bridged = model.bridge(model.encoder.last_hidden(memory.final))
        torch.testing.assert_close(state[0], torch.tanh(bridged))
        model.bridge.bias.fill_(-100.0)  # far past where tanh saturates
        torch.testing.assert_close(model.initial_state(memory), -torch.ones_like(state))


def test_tied_and_shared_embeddings_are_one_parameter_with_the_output_layer() -> None:
    def size(model: Seq2Seq) -> int:
        return sum(p.numel() for p in model.parameters())

    tied = Seq2Seq(partial(GRUBackbone, hidden_size=8), 20, 20, 8, share_embeddings=True)
    untied = Seq2Seq(partial(GRUBackbone, hidden_size=8), 20, 20, 8, tie_embeddings=False, share_embeddings=False)
    assert tied.out.weight is tied.target_embed.weight is tied.source_embed.weight
    assert size(untied) - size(tied) == 2 * 20 * 8  # one matrix of 20 x 8 where the untied model has three


@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_attention_gives_padding_no_weight_and_padding_changes_nothing(attention: str) -> None:
    model = tiny_model(30, attention=attention)
    short, long = [5, 6, 7, EOS], [8, 9, 10, 11, 12, 13, EOS]
    source, lengths = pad_ids([short, long])
    target_in, target_lengths = pad_ids([[BOS, 5, 6], [BOS, 5, 6]])
    with torch.no_grad():
        memory = model.encode(source, lengths)
        decoded = torch.randn(2, 3, model.decoder.hidden_size)
        _, weights = model.attention(decoded, memory.keys, memory.outputs, memory.mask)
        assert torch.all(weights[0, :, len(short):] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
        batched = model(source, lengths, target_in, target_lengths)[0]
        alone = model(torch.tensor([short]), torch.tensor([len(short)]), target_in[:1], target_lengths[:1])[0]
    torch.testing.assert_close(batched, alone)


def test_carried_decoder_state_gives_the_teacher_forced_logits() -> None:
    model = tiny_model(30)
    source, lengths = pad_ids([[5, 6, 7, EOS], [8, 9, EOS]])
    target = torch.tensor([[BOS, 11, 12, 13], [BOS, 14, 15, 16]])
    with torch.no_grad():
        forced = model(source, lengths, target, torch.tensor([4, 4]))
        memory = model.encode(source, lengths)
        state, steps = model.initial_state(memory), []
        for t in range(target.size(1)):
            logits, state, _ = model.decode_step(target[:, t], state, memory)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), forced)


def test_the_length_limit_is_ratio_times_source_plus_extra_within_one_and_the_cap() -> None:
    assert max_lengths(torch.tensor([100, 10, 0]), 1.5, 3, 50).tolist() == [50, 18, 3]
    assert max_lengths(torch.tensor([0]), 1.0, 0, 50).tolist() == [1]


def test_beam_search_with_one_beam_is_greedy() -> None:
    model = tiny_model(40, seed=3)
    source, lengths = pad_ids([[5, 6, 7, 8, EOS], [9, EOS], [10, 11, 12, EOS]])
    limit = max_lengths(lengths, 1.5, 3, 50)
    expected, got = greedy(model, source, lengths, limit), beam_search(model, source, lengths, limit, beam=1)
    assert [h.tokens for h in got] == [h.tokens for h in expected]
    assert all(len(h.tokens) <= n for h, n in zip(got, limit.tolist()))
    assert [h.ended for h in got] == [h.ended for h in expected] == [len(h.tokens) < n for h, n in zip(got, limit)]
    with torch.no_grad():
        model.out.bias[EOS] = -1e4  # an end of sentence it never emits: every sentence stops at its limit
    for decoded in greedy(model, source, lengths, limit), beam_search(model, source, lengths, limit, beam=3):
        assert [(len(h.tokens), h.ended) for h in decoded] == [(n, False) for n in limit.tolist()]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.attention, e.attention)


def test_beam_search_without_early_stopping_runs_on_while_a_longer_beam_could_win(
        monkeypatch: pytest.MonkeyPatch) -> None:
    source, lengths = pad_ids([[4, 5, 6, 7, EOS]])
    limit = torch.tensor([8])
    for seed in range(100, 110):
        torch.manual_seed(seed)
        model = Seq2Seq(partial(GRUBackbone, hidden_size=16), 8, 8, 8).eval()
        with torch.no_grad():
            model.out.weight.mul_(3)  # peaked distributions: hypotheses end early, some longer ones score better
        stopped = beam_search(model, source, lengths, limit, 2, length_penalty=1.0, early_stopping=False)[0]
        with monkeypatch.context() as patch:  # the same search never stopping before max_len
            patch.setattr(decode, "_complete", lambda finished, k, early_stopping, *rest: False)
            full = beam_search(model, source, lengths, limit, 2, length_penalty=1.0, early_stopping=False)[0]
        assert stopped.tokens == full.tokens and stopped.score == pytest.approx(full.score), seed


class MarkovDecoder:
    """A stand-in for Seq2Seq in decoding whose next token depends only on the previous one: `table[prev][next]` is
    its probability (any other next token: about e^-30)."""

    def __init__(self, table: dict[int, dict[int, float]], vocab: int) -> None:
        self.log_probs = torch.full((vocab, vocab), -30.0)
        for previous, nexts in table.items():
            for token, probability in nexts.items():
                self.log_probs[previous, token] = math.log(probability)

    def encode(self, source: torch.Tensor, lengths: torch.Tensor) -> Memory:
        batch, length = source.shape
        return Memory(torch.zeros(batch, length, 1), torch.zeros(batch, length, 1),
                      torch.ones(batch, length, dtype=torch.bool), torch.zeros(1, batch, 1))

    def initial_state(self, memory: Memory) -> torch.Tensor:
        return memory.final

    def decode_step(self, tokens: torch.Tensor, state: torch.Tensor,
                    memory: Memory) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.log_probs[tokens], state, torch.full(memory.mask.shape, 1 / memory.mask.size(1))


def test_beam_search_without_early_stopping_keeps_a_longer_hypothesis_that_ends_better() -> None:
    a, c, d, e, b = 4, 5, 6, 7, 8  # after BOS and EOS (2, 3)
    model = MarkovDecoder({BOS: {EOS: 0.5, a: 0.45, b: 0.05}, a: {EOS: 0.55, c: 0.45}, c: {d: 0.99, EOS: 0.01},
                           d: {e: 0.99, EOS: 0.01}, e: {EOS: 0.99, e: 0.01}, b: {b: 0.99, EOS: 0.01}}, vocab=9)
    source, lengths = torch.tensor([[4, 5, EOS]]), torch.tensor([3])
    # two beams: "" and "a" end at steps 1 and 2 (log 0.5 / 1 and log 0.2475 / 2), then "a c d e" at step 5
    best = beam_search(model, source, lengths, torch.tensor([6]), 2, length_penalty=1.0, early_stopping=False)[0]
    assert best.tokens == [a, c, d, e] and best.ended
    expected = math.log(0.45 * 0.45 * 0.99 * 0.99 * 0.99) / 5  # the length counts the EOS
    assert best.score == pytest.approx(expected, abs=1e-4)
    first = beam_search(model, source, lengths, torch.tensor([6]), 2, length_penalty=1.0)[0]  # stops at two ended
    assert first.tokens == [] and first.score == pytest.approx(math.log(0.5), abs=1e-4)


def test_beam_search_finds_a_likelier_translation_than_greedy_or_the_same() -> None:
    model = tiny_model(40, seed=4)
    source, lengths = pad_ids([[5, 6, 7, 8, EOS], [9, 10, EOS]])
    limit = torch.tensor([6, 6])
    wide = beam_search(model, source, lengths, limit, beam=8, length_penalty=0.0)
    narrow = greedy(model, source, lengths, limit)
    for w, n, length in zip(wide, narrow, lengths.tolist()):
        assert w.score >= n.score - 1e-5  # length_penalty 0: both scores are summed log-probabilities
        assert w.attention.shape == (len(w.tokens), length)
    assert wide[1].score > narrow[1].score + 1  # here the wide beam finds a far likelier one (-3.1 against -16.6)


def test_each_beam_hypothesis_carries_the_attention_of_its_own_tokens() -> None:
    """Beams swap rows step by step; a finished one's attention is the decoder's along its own tokens."""
    model = tiny_model(40, seed=4)
    source, lengths = pad_ids([[5, 6, 7, 8, EOS], [9, 10, EOS], [11, 12, 13, EOS]])
    with torch.no_grad():
        model.out.bias[EOS] = -1e4  # no end of sentence: every beam runs to its limit
    found = beam_search(model, source, lengths, torch.tensor([6, 7, 8]), beam=4, length_penalty=0.0)
    assert [len(h.tokens) for h in found] == [6, 7, 8]
    with torch.no_grad():
        for b, hypothesis in enumerate(found):
            memory = model.encode(source[b : b + 1], lengths[b : b + 1])
            state, token, rows = model.initial_state(memory), BOS, []
            for next_token in hypothesis.tokens:
                _, state, weights = model.decode_step(torch.tensor([token]), state, memory)
                rows.append(weights[0, : lengths[b]])
                token = next_token
            torch.testing.assert_close(hypothesis.attention, torch.stack(rows), atol=1e-6, rtol=1e-5)


@pytest.fixture
def one_thread():
    """Tiny models train fastest in one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_model_learns_to_reverse_tokens_exactly(one_thread: None) -> None:
    generator = torch.Generator().manual_seed(0)

    def sample(n: int) -> list[list[int]]:
        lengths = torch.randint(2, 6, (n,), generator=generator).tolist()
        return [torch.randint(4, 12, (length,), generator=generator).tolist() for length in lengths]

    model = tiny_model(12, seed=1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(600):  # model seeds 0-3: 0.995-1.0 (300 steps at 2e-2: 0.88-1.0)
        words = sample(32)
        source, lengths = pad_ids([[*w, EOS] for w in words])
        target_in, target_lengths = pad_ids([[BOS, *w[::-1]] for w in words])
        target_out, _ = pad_ids([[*w[::-1], EOS] for w in words])
        logits = model(source, lengths, target_in, target_lengths)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), target_out.flatten(), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    words = sample(200)
    source, lengths = pad_ids([[*w, EOS] for w in words])
    hypotheses = greedy(model.eval(), source, lengths, max_lengths(lengths, 1.0, 2, 20))
    exact = sum(h.tokens == w[::-1] for h, w in zip(hypotheses, words)) / len(words)
    assert exact >= 0.95, f"exact-match accuracy {exact:.3f} on reversing unseen sequences"


def test_a_test_split_that_cannot_be_read_fails_before_training(bundled: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(bundled, data)
    (data / "test.toy").unlink()
    cfg = compose_train_config("translation", [f"task.data.path={data}", *TINY], tmp_path / "run")
    with pytest.raises(UserError, match=r"test\.en has no aligned test\.toy\[\.gz\] beside it in .*: missing\)$"):
        run.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
    (data / "test.toy").mkdir()
    with pytest.raises(UserError, match=r"test\.toy: a folder, not a file\)$"):
        run.train(cfg)
    cfg.task.data.path = str(data / "test.en")
    with pytest.raises(UserError, match=r"test\.en: a file, not the translation data folder"):
        run.train(cfg)


def test_misaligned_files_name_both_files(tmp_path: Path) -> None:
    (tmp_path / "train.en").write_text("a\nb\nc\n")
    (tmp_path / "train.toy").write_text("x\ny\n")
    with pytest.raises(UserError, match=r"train\.en has 3 lines but .*train\.toy has 2"):
        read_parallel(tmp_path, "train", "en", "toy", "error")


def test_non_utf8_names_file_and_line_or_is_replaced(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    (tmp_path / "train.en").write_bytes(b"good\nbad \xff here\n")
    with gzip.open(tmp_path / "train.toy.gz", "wt") as f:
        f.write("gut\nschlecht\n")
    with pytest.raises(UserError, match=r"train\.en:2: not UTF-8"):
        read_parallel(tmp_path, "train", "en", "toy", "error")
    corpus = read_parallel(tmp_path, "train", "en", "toy", "replace")
    assert corpus is not None and corpus.source[1] == "bad \ufffd here" and corpus.target[1] == "schlecht"


def test_empty_lines_are_skipped_with_their_line_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "val.en").write_text("one\n\nthree\nfour\n")
    (tmp_path / "val.toy").write_text("uno\ndos\n \nkvar\n")
    with caplog.at_level(logging.WARNING):
        corpus = read_parallel(tmp_path, "val", "en", "toy", "error")
    assert corpus is not None and corpus.source == ["one", "four"] and corpus.lines == [1, 4]
    assert "val.en" in caplog.text and "line(s) 2, 3" in caplog.text


def test_predicting_on_the_test_split_keeps_every_source_line(bundled: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(bundled, data)
    lines = (data / "test.toy").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "test.toy").write_text("".join(["\n", *lines[1:]]), encoding="utf-8")  # a reference left empty
    task = TranslationTask(compose_train_config("translation", [f"task.data.path={data}", *TINY], tmp_path).task)
    task.datamodule().predict_dataloader()
    assert task.input_rows == len(lines) and task.predict_corpus.lines[0] == 1  # translations.txt stays aligned
    assert len(task._corpus("test").source) == len(lines) - 1  # scoring still skips the pair


def test_stdin_lines_are_read_with_their_line_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Ein Hund.\n\nbad \xff\n")))
    with pytest.raises(UserError, match=r"<stdin>:3: not UTF-8"):
        read_source_text("-", "error")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Ein Hund.\n\nZwei.\n")))
    corpus = read_source_text("-", "error")
    assert corpus.source == ["Ein Hund.", "", "Zwei."] and corpus.lines == [1, 2, 3]


def test_tsv_pairs_pick_columns_by_language(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "train.tsv").write_text("de\ten\nein Hund\ta dog\n\nzwei\ttwo\n")
    with caplog.at_level(logging.WARNING):
        corpus = read_parallel(tmp_path, "train", "en", "de", "error")
    assert corpus is not None and corpus.source == ["a dog", "two"] and corpus.target == ["ein Hund", "zwei"]
    assert corpus.lines == [2, 4]
    assert "train.tsv: empty sentence, pair skipped on line(s) 3" in caplog.text  # a blank row was dropped unsaid
    expected = r"train\.tsv:1: no column 'fr' \(task\.data\.source\); the columns are \['de', 'en'\]"
    with pytest.raises(UserError, match=expected):
        read_parallel(tmp_path, "train", "fr", "de", "error")


def test_over_long_sentences_follow_the_configured_rule(bundled: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY], tmp_path)
    task = TranslationTask(cfg.task)
    task.datamodule()
    sentences, lines = ["Some dogs see a cat.", "A dog."], [7, 8]
    with caplog.at_level(logging.WARNING):
        truncated = Encoder(task.source_tokenizer, 4, "truncate")(sentences, lines, "f.en", "source")
    assert [len(ids) for ids in truncated] == [4, 4] and truncated[0][-1] == EOS  # type: ignore[index]
    assert "f.en: source sentence over task.data.max_tokens=4 tokens, truncated on line(s) 7" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # two long sentences of line 7, then line 8: each line named once
        Encoder(task.source_tokenizer, 2, "truncate")([*sentences, "Some dogs."], [7, 8, 7], "f.en", "source")
    assert "truncated on line(s) 7, 8\n" in caplog.text + "\n"
    assert Encoder(task.source_tokenizer, 4, "skip")(sentences, lines, "f.en", "source")[0] is None
    with pytest.raises(UserError, match=r"f\.en:7: source sentence has \d+ tokens"):
        Encoder(task.source_tokenizer, 4, "error")(sentences, lines, "f.en", "source")


def test_a_message_about_one_side_names_its_file(bundled: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(bundled, folder)
    lines = (folder / "val.toy").read_text(encoding="utf-8").splitlines()
    lines[4] = " ".join([lines[4]] * 40)  # line 5 of the target side only is over-long
    (folder / "val.toy").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = compose_train_config("translation", [f"task.data.path={folder}", *TINY, "task.data.too_long=error",
                                               "task.data.max_tokens=60"], tmp_path / "run")
    with pytest.raises(UserError, match=rf"^{re.escape(str(folder / 'val.toy'))}:5: target sentence has"):
        TranslationTask(cfg.task).datamodule().dataset("val")  # was named ".../val.en + val.toy:5"
    (folder / "val.toy").write_text("\n".join(lines[:4] + lines[5:]) + "\n", encoding="utf-8")
    (folder / "val.en").write_text("\n".join((folder / "val.en").read_text().splitlines()[:4] +
                                             (folder / "val.en").read_text().splitlines()[5:]) + "\n")
    test = (folder / "test.en").read_text(encoding="utf-8").splitlines()
    long_line = " ".join([test[1].rstrip(".")] * 40)  # one sentence (no full stops to split it at)
    (folder / "test.en").write_text("\n".join([test[0], long_line, *test[2:]]) + "\n")
    with pytest.raises(UserError, match=rf"^{re.escape(str(folder / 'test.en'))}:2: source sentence has"):
        TranslationTask(cfg.task).datamodule().dataset("predict")  # the test split's source side, to translate


def test_a_split_left_without_pairs_or_an_empty_input_is_one_clear_error(bundled: Path, tmp_path: Path) -> None:
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY, "task.data.too_long=skip",
                                               "task.data.max_tokens=2"], tmp_path)
    with pytest.raises(UserError, match=r"train\.en \+ train\.toy: no train pairs left \(empty sentences, and "
                                        r"with task\.data\.too_long=skip those over task\.data\.max_tokens=2, are "
                                        r"skipped\)"):
        TranslationTask(cfg.task).datamodule().train_dataloader()
    (tmp_path / "empty.txt").write_text("")
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY,
                                               f"task.predict.input={tmp_path / 'empty.txt'}"], tmp_path)
    datamodule = TranslationTask(cfg.task).datamodule()
    with pytest.raises(UserError, match=r"empty\.txt: nothing to translate \(no lines\)"):
        datamodule.predict_dataloader()


def test_settings_and_a_missing_validation_split_fail_before_the_model_is_built(bundled: Path,
                                                                                 tmp_path: Path) -> None:
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY, "task.data.too_long=cut"], tmp_path)
    with pytest.raises(UserError, match=r"task\.data\.too_long must be one of \['truncate', 'skip', 'error'\], "
                                        "got 'cut'"):
        TranslationTask(cfg.task)
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY, "task.data.splits.val=dev"],
                               tmp_path)
    with pytest.raises(UserError, match=r"no dev pairs \(expected dev\.en \+ dev\.toy"):
        TranslationTask(cfg.task).datamodule()


def test_a_split_in_two_forms_or_without_a_full_pair_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "train.en").write_text("a dog\n")
    (tmp_path / "train.toy").write_text("dog a\n")
    (tmp_path / "train.tsv").write_text("en\ttoy\nthe cat\tcat the\n")
    with pytest.raises(UserError, match=r"both train.en \+ train.toy and train.tsv hold the train split: keep one"):
        read_parallel(tmp_path, "train", "en", "toy", "error")
    (tmp_path / "train.tsv").unlink()
    (tmp_path / "train.en.gz").write_bytes(gzip.compress(b"a cat\n"))  # which one is meant?
    with pytest.raises(UserError, match=r"both train.en and train.en.gz: keep the one to read"):
        read_parallel(tmp_path, "train", "en", "toy", "error")
    (tmp_path / "train.en.gz").unlink()
    (tmp_path / "train.toy").write_text("\n")
    with pytest.raises(UserError, match=r"train.en \+ train.toy: no pair with both sides non-empty \(of 1\)"):
        read_parallel(tmp_path, "train", "en", "toy", "error")
    (tmp_path / "train.en").write_text("")
    (tmp_path / "train.toy").write_text("")
    with pytest.raises(UserError, match=r"train.en \+ train.toy: no sentence pairs \(empty\)"):
        read_parallel(tmp_path, "train", "en", "toy", "error")


def test_a_damaged_gzip_file_is_named(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(b"".join(b"dog %d\n" % i for i in range(500))))
    data[len(data) // 2] ^= 0xFF  # damaged deflate data: zlib.error, not the gzip module's own OSError
    (tmp_path / "train.en.gz").write_bytes(bytes(data))
    (tmp_path / "train.toy").write_text("x\n")
    with pytest.raises(UserError, match=r"train\.en\.gz: cannot read \("):
        read_parallel(tmp_path, "train", "en", "toy", "error")


def test_unknown_characters_become_unk_with_a_warning(bundled: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY], tmp_path)
    task = TranslationTask(cfg.task)
    task.datamodule()
    with caplog.at_level(logging.WARNING):
        ids = Encoder(task.source_tokenizer, 100, "truncate")(["A dog.", "A 狗 dog."], [1, 2], "in.txt", "source")
    assert task.source_tokenizer.unk_token_id in ids[1]  # type: ignore[operator]
    assert "in.txt: source words or characters unknown to the tokenizer, kept as <unk> on line(s) 2" in caplog.text
    (marks,) = Encoder(task.source_tokenizer, 100, "truncate")(["Some <s>old</s> farmer."], [1], "in.txt", "source")
    assert marks is not None and BOS not in marks and marks.index(EOS) == len(marks) - 1  # text, not sentence marks


def per_token_scores(checkpoint: Path) -> tuple[float, float]:
    """The test split's label-smoothed cross-entropy and perplexity per target token, pair by pair."""
    module = load_checkpoint(checkpoint).eval()
    dataset = module.task.datamodule().dataset("test")
    smoothing = float(module.task.cfg.model.label_smoothing)
    smoothed, nll, tokens = 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(len(dataset)):
            pair = dataset.__getitems__([i])
            logits = module.model(pair["source"], pair["source_lengths"], pair["target_in"], pair["target_lengths"])
            flat, gold = logits.flatten(0, 1), pair["target_out"].flatten()
            smoothed += float(F.cross_entropy(flat, gold, label_smoothing=smoothing, reduction="sum"))
            nll += float(F.cross_entropy(flat, gold, reduction="sum"))
            tokens += len(gold)
    return smoothed / tokens, math.exp(nll / tokens)


def test_lines_split_into_sentences_at_their_ends_only() -> None:
    lines = ["A boy runs. Some girls watch a ball!", "", 'He said "Hi." 3 dogs? ok.', "Ein Hund läuft. Über"]
    corpus = Corpus("x", lines, [], [1, 2, 3, 4])
    sentences, rows = split_sentences(corpus)
    assert sentences.source == ["A boy runs.", "Some girls watch a ball!", "", 'He said "Hi."', "3 dogs? ok.",
                                "Ein Hund läuft.", "Über"]
    assert sentences.lines == [1, 1, 2, 3, 3, 4, 4] and rows == [0, 0, 1, 2, 2, 3, 3]
    others = ["Он пришёл. Она ушла.", "Ήρθε. Έφυγε.", "Przyszedł. Łukasz też.", "Dr. med. arzt"]
    split, _ = split_sentences(Corpus("y", others, [], [1, 2, 3, 4]))  # capitals of any script; not before "med"
    assert split.source == ["Он пришёл.", "Она ушла.", "Ήρθε.", "Έφυγε.", "Przyszedł.", "Łukasz też.", "Dr. med. arzt"]


def test_plugin_contract(bundled: Path, tmp_path: Path) -> None:
    check_task_plugin("translation", overrides=[f"task.data.path={bundled}", *TINY], tmp_path=tmp_path)


def test_cli_trains_then_translates_a_file_one_line_per_line(bundled: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trained = run_forked("gru-suite", "task=translation", f"task.data.path={bundled}", *TINY, "trainer.max_epochs=1",
                         "task.data.eval_batch_size=16",  # test batches of 16, 16 and 8 pairs
                         "predict_after_training=false", "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/bleu", "test/bleu", "test/chrf", "test/perplexity"} <= set(metrics)
    assert "BLEU" in trained.stdout and "tok:13a" in trained.stdout  # the sacreBLEU signature is logged
    loss, perplexity = per_token_scores(run_dir / "checkpoints" / "last.ckpt")  # one epoch: last is the best
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-4)  # batches weighed by their tokens
    assert metrics["test/perplexity"] == pytest.approx(perplexity, rel=1e-4)
    source = tmp_path / "input.txt"
    source.write_text("A dog sees the cat.\n\nSome 狗 watch the river.\n" + "The big dog " * 60 + "\n"
                      "A dog runs. The cat sleeps.\n")
    out_dir = tmp_path / "predicted"
    predicted = run_forked("gru-suite-predict", "task=translation",
                           f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"task.predict.input={source}",
                           "task.data.path=/nonexistent", "task.data.max_tokens=30", "task.predict.plots=5",
                           f"hydra.run.dir={out_dir}")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = (out_dir / "translations.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 6 and lines[-1] == "" and lines[1] == ""  # five lines, the empty one kept empty
    logged = predicted.stdout + predicted.stderr
    assert "input.txt: empty line, written as an empty line on line(s) 2" in logged
    assert "unknown to the tokenizer" in logged and "truncated on line(s) 4" in logged
    records = [json.loads(r) for r in (out_dir / "attention.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4, 5, 5]  # line 5's two sentences, each translated
    assert all(len(r["weights"]) == len(r["target"]) and len(r["weights"][0]) == len(r["source"])
               for r in records if r["target"])
    assert (out_dir / "attention_00001.png").read_bytes()[:4] == b"\x89PNG"
    places = [sum(r["line"] == record["line"] for r in records[:i + 1]) for i, record in enumerate(records)]
    plotted = [f"attention_{r['line']:05d}{f'_{place}' if place > 1 else ''}.png"
               for r, place in zip(records, places) if r["target"]]  # a sentence's place in its line names it
    assert sorted(path.name for path in out_dir.glob("attention_*.png")) == sorted(plotted)
    assert (out_dir / "tokenizer" / "tokenizer.json").is_file()  # joint vocabulary: one tokenizer
    source.write_text("A dog runs. " + "The big dog " * 60 + "\nThe cat sleeps.\n")
    skipped = run_forked("gru-suite-predict", "task=translation", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                         f"task.predict.input={source}", "task.data.max_tokens=30", "task.data.too_long=skip",
                         f"hydra.run.dir={tmp_path / 'skipped'}")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    first, second, end = (tmp_path / "skipped" / "translations.txt").read_text(encoding="utf-8").split("\n")
    assert first == "" and second and end == ""  # the line with a skipped sentence is empty, not half translated
    attention = (tmp_path / "skipped" / "attention.jsonl").read_text().splitlines()
    assert [json.loads(r)["line"] for r in attention] == [2]  # nor do its other sentences' alignments appear
    swapped = run_forked("gru-suite-eval", "task=translation", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                         "task.data.source=toy", "task.data.target=en", f"hydra.run.dir={tmp_path / 'swapped'}")
    assert swapped.returncode == 2 and ("the model translates en -> toy; task.data.source=toy and "
                                        "task.data.target=en ask for the other direction") in swapped.stderr
    (renamed := tmp_path / "renamed").mkdir()  # the test files under other language names: read, with a warning
    for side, language in (("en", "eng"), ("toy", "toi")):
        (renamed / f"test.{language}").write_text((bundled / f"test.{side}").read_text(encoding="utf-8"))
    other = run_forked("gru-suite-eval", "task=translation", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                       f"task.data.path={renamed}", "task.data.source=eng", "task.data.target=toi",
                       f"hydra.run.dir={tmp_path / 'other'}")
    assert other.returncode == 0, other.stderr[-3000:]
    assert ("the model translates en -> toy; the files of task.data.source=eng and task.data.target=toi are read as "
            "those languages") in other.stdout + other.stderr
    clash = run_forked("gru-suite-predict", "task=translation", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                       "task.predict.output=attention.jsonl", f"hydra.run.dir={tmp_path / 'clash'}")
    assert clash.returncode == 2 and "task.predict.output=attention.jsonl is the name of another file the run " \
        "writes" in clash.stderr and "Predicting" not in clash.stdout + clash.stderr  # refused before any work


def restored_task(bundled: Path, source: Path, tmp_path: Path) -> TranslationTask:
    """A task restored from the state of one fitted on `bundled`, translating the lines of `source`."""
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY, f"task.predict.input={source}"],
                               tmp_path)
    fitted = TranslationTask(cfg.task)
    fitted.datamodule()
    return TranslationTask(cfg.task, state=fitted.state_dict())


def test_gate_plots_name_the_source_sentence_and_label_its_tokens(bundled: Path, tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from gru_suite import gates

    source = tmp_path / "source.txt"
    source.write_text("Kelka donas virdas vetas konant.\nKelka donas.\n", encoding="utf-8")
    task = restored_task(bundled, source, tmp_path)
    module = SimpleNamespace(task=task, model=task.build_model(partial(GRUBackbone, hidden_size=8)).eval())
    drawn: list = []
    monkeypatch.setattr(gates, "save_figure", lambda figure, path: drawn.append(figure) or path)
    for sample in (0, 1):
        view, _ = gates.plot_model_gates(module, tmp_path, sample=sample)
        line, text = next((n, t) for n, t in enumerate(source.read_text().splitlines(), 1) if view.title.endswith(t))
        assert view.title == f"{source}:{line}: {text}"
        tokenizer = task.source_tokenizer  # the encoder reads the sentence's pieces and its end mark
        ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        assert list(view.steps) == readable_pieces(tokenizer.convert_ids_to_tokens(ids))
        assert [label.get_text() for label in drawn[-1].axes[3].get_xticklabels()] == list(view.steps)


def test_sentences_prediction_stopped_before_are_written_as_empty_lines(bundled: Path, tmp_path: Path, caplog) -> None:
    source = tmp_path / "source.txt"
    source.write_text("Kelka donas.\n\nVirdas vetas. Kelka konant.\n", encoding="utf-8")
    task = restored_task(bundled, source, tmp_path)
    data = task.datamodule()
    data.setup("predict")
    tokens = task.target_tokenizer("a dog", add_special_tokens=False)["input_ids"]
    first_two = [{"index": torch.tensor([0, 1]), "tokens": [tokens, []],  # the empty line's "translation" too
                  "attention": [torch.full((len(tokens), 3), 1 / 3), torch.zeros(0, 1)],
                  "score": torch.tensor([-1.0, -9.0]), "ended": [False, False]}]  # as if limit_predict_batches stopped
    with caplog.at_level(logging.WARNING):
        task.write_predictions(first_two, data, tmp_path / "out")
    assert (tmp_path / "out" / "translations.txt").read_text(encoding="utf-8").splitlines() == ["a dog", "", ""]
    assert "2 of 4 sentences were not translated" in caplog.text
    assert "source.txt: translation stopped at its length limit (task.decode.max_length" in caplog.text
    assert "before its end on line(s) 1\n" in caplog.text


def test_translations_made_in_bfloat16_write_their_attention(bundled: Path, tmp_path: Path) -> None:
    source = tmp_path / "source.txt"
    source.write_text("Kelka donas.\nVirdas vetas.\n", encoding="utf-8")
    task = restored_task(bundled, source, tmp_path)
    data = task.datamodule()
    data.setup("predict")
    cfg = compose_train_config("translation", [f"task.data.path={bundled}", *TINY], tmp_path)
    model = run.build_module(cfg, task).model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as trainer.precision=bf16-mixed predicts
        predicted = task.predict_step(model, next(iter(data.predict_dataloader())))
    assert all(weights.dtype == torch.float32 for weights in predicted["attention"])
    task.cfg.predict.plots = 1
    paths = task.write_predictions([predicted], data, tmp_path / "out")
    assert (tmp_path / "out" / "attention.jsonl").read_text().count("\n") == 2 and len(paths) >= 3
    task.cfg.predict.attention = False  # then no sentence's weights are held until the writing
    with torch.no_grad():
        unweighted = task.predict_step(model, next(iter(data.predict_dataloader())))
    assert unweighted["attention"] == [None, None] and len(unweighted["tokens"]) == 2
    task.write_predictions([unweighted], data, tmp_path / "plain")
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["tokenizer", "translations.txt"]


def test_a_sentence_is_complete_once_its_best_live_beam_cannot_beat_its_worst_finished_one() -> None:
    def hypotheses(*scores: float) -> list[decode.Hypothesis]:
        return [decode.Hypothesis([5], torch.zeros(1, 2), score) for score in scores]

    def complete(kept: list[decode.Hypothesis], live: list[float], words: list[int], early_stopping: bool = False,
                 length_penalty: float = 0.0) -> bool:
        return decode._complete(kept, 2, early_stopping, torch.tensor(live), torch.tensor(words), steps=4, max_len=10,
                                length_penalty=length_penalty)

    assert not complete(hypotheses(-1.0, -3.0), [-2.0, -5.0], [7, EOS])  # -2 could still replace the worst, -3
    assert complete(hypotheses(-1.0, -1.5), [-2.0, -5.0], [7, EOS])  # it cannot beat -1.5
    assert complete(hypotheses(-1.0, -3.0), [-2.0, -5.0], [EOS, 7])  # the -2 beam has ended: -5 is the best live one
    assert complete(hypotheses(-1.0, -3.0), [-2.0], [7], early_stopping=True)  # early stopping: k finished are enough
    assert not complete(hypotheses(-1.0), [-2.0], [7], early_stopping=True)
    # with a length penalty, the live beam might end at max_len: -2 / 10 beats -0.3 (scores divided by length)
    assert not complete(hypotheses(-0.1, -0.3), [-2.0], [7], length_penalty=1.0)


def test_a_long_sentences_alignment_picture_stays_small() -> None:
    source, target = [f"w{i}" for i in range(3000)], [f"v{i}" for i in range(2000)]
    figure = plot_alignment(source, target, np.full((2000, 3000), 1 / 3000), "input line 1")
    assert tuple(figure.get_size_inches()) == (MAX_INCHES, MAX_INCHES)  # was 1,053 x 701 inches: 7 GB of pixels
    axes = figure.axes[0]
    assert axes.get_xlabel() == "source (3000 pieces)" and len(axes.get_xticklabels()) < 20  # positions, not pieces
    short = plot_alignment(source[:LABELLED_PIECES], target[:3], np.zeros((3, LABELLED_PIECES)), "input line 2")
    assert [t.get_text() for t in short.axes[0].get_yticklabels()] == ["v0", "v1", "v2"]
    assert len(short.axes[0].get_xticklabels()) == LABELLED_PIECES and short.axes[0].get_xlabel() == "source"
    small = plot_alignment(source[:6], target[:3], np.full((3, 6), 0.1), "input line 3")
    wide, tall = (plot_alignment(source[:s], target[:t], np.full((t, s), 0.1), "input line 3").get_size_inches()
                  for s, t in ((12, 3), (6, 9)))
    assert wide[0] > small.get_size_inches()[0] and tall[1] > small.get_size_inches()[1]  # source across, output down
    assert tuple(wide)[1] == tuple(small.get_size_inches())[1] and tall[0] == small.get_size_inches()[0]
    assert small.axes[0].images[0].get_clim() == (0.0, 1.0)  # weights of 0.1 drawn light, not at full scale


def test_a_test_split_named_but_missing_is_an_error(bundled: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "data"
    shutil.copytree(bundled, folder)
    named = compose_train_config("translation", [f"task.data.path={folder}", *TINY, "task.data.splits.test=nosuch"],
                                 tmp_path / "named")
    with pytest.raises(UserError, match=r"no nosuch pairs \(expected nosuch.en \+ nosuch.toy"):
        TranslationTask(named.task).datamodule()  # was a silent fallback to the validation split
    for path in folder.glob("test.*"):
        path.unlink()
    default = compose_train_config("translation", [f"task.data.path={folder}", *TINY], tmp_path / "default")
    with caplog.at_level(logging.WARNING):
        task = TranslationTask(default.task)
        task.datamodule()
    assert "has no test split: testing on the validation split" in caplog.text
    assert task._corpus("test").source == task._corpus("val").source
