"""Translation: subword tokenizers fitted on the training pairs, a GRU encoder-decoder with attention,
greedy or beam-search decoding, sacreBLEU scores, aligned output text and attention pictures."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from gru_suite.artifacts import wrong_artifact_name
from gru_suite.atomic import write_files, write_jsonl
from gru_suite.distributed import gather_dict, warn_on_rank_zero
from gru_suite.perplexity import perplexity
from gru_suite.errors import UserError
from gru_suite.task import BackboneFactory, SequenceView, Stage, StepOutput, TaskPlugin, eval_mode
from gru_suite.text import (
    ENCODING_ERRORS,
    PAD_ID,
    TOKENIZER_KINDS,
    token_labels,
    tokenizer_from_state,
    tokenizer_state,
    train_tokenizer,
)
from gru_suite_plugins.translation.data import (
    Corpus,
    Encoder,
    PairSet,
    TooLong,
    TranslationData,
    read_parallel,
    read_source_text,
    too_long_rule,
    warn_lines,
)
from gru_suite_plugins.translation.decode import BOS, Hypothesis, beam_search, greedy, max_lengths
from gru_suite_plugins.translation.model import AttentionKind, Seq2Seq
from gru_suite_plugins.translation.writer import save_alignment, write_lines

log = logging.getLogger(__name__)

DEFAULT_TEST_STEM = "test"
"""The test split's file stem by default; without such files, testing uses the validation split."""


class TranslationTask(TaskPlugin):
    """Translate `task.data.source` sentences into `task.data.target`.

    The state holds both tokenizers (`tokenizer.json` text; one shared vocabulary when
    `task.tokenizer.joint`), so a checkpoint translates on its own. `loss` is the
    label-smoothed cross-entropy per target token; validation and test also log the
    unsmoothed `perplexity` and sacreBLEU `bleu` and `chrf` of the decoded, detokenised
    output against the raw references (validation decodes with
    `decode.val_beam_size`, test with `decode.beam_size`).
    """

    choices = (("data.too_long", get_args(TooLong)), ("model.attention", get_args(AttentionKind)),
               ("tokenizer.kind", TOKENIZER_KINDS), ("data.encoding_errors", ENCODING_ERRORS))
    path_settings = ("data.path", "predict.input")
    trained_settings = ("tokenizer",)
    required = ("data.path", "data.source", "data.target", "data.splits.train", "data.splits.val", "data.max_tokens",
                "data.eval_batch_size", "tokenizer.vocab_size", "tokenizer.min_frequency", "model.embed_size",
                "model.dropout", "model.label_smoothing", "decode.beam_size", "decode.val_beam_size",
                "decode.length_penalty", "decode.max_length_ratio", "decode.max_length_extra", "predict.plots",
                "predict.output")
    numbers = (*TaskPlugin.numbers, ("data.max_tokens", int, 2), ("data.eval_batch_size", int, 1),
               ("tokenizer.vocab_size", int, 1), ("tokenizer.min_frequency", int, 0), ("model.embed_size", int, 1),
               ("model.dropout", float, 0, 1, True), ("model.label_smoothing", float, 0, 1, True),
               ("decode.beam_size", int, 1),
               ("decode.val_beam_size", int, 1), ("decode.length_penalty", float, 0),
               ("decode.max_length_ratio", float, 0), ("decode.max_length_extra", int, 0),
               ("decode.max_length", int, 1), ("predict.plots", int, 0))

    @classmethod
    def wrong_settings(cls, cfg: DictConfig) -> list[str]:
        """The declared settings, and `predict.output`, a file name of its own in the run folder."""
        return super().wrong_settings(cfg) + wrong_artifact_name(cfg.predict.get("output"), "task.predict.output",
                                                                 OTHER_ARTIFACTS)

    def __init__(self, cfg: DictConfig, state: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg, state)
        too_long_rule(cfg.data.too_long)  # before any data is read
        self._corpora: dict[str, Corpus] = {}
        self._scores: dict[str, dict[int, tuple[str, str, float, int]]] = {}
        self.blank: set[int] = set()
        self.skipped_rows: set[int] = set()
        """Predict lines written empty: empty input, or skipped as too long."""
        self.predict_corpus: Corpus | None = None
        self.input_rows = 0  # lines of the predict input
        self.row_of: list[int] = []  # the input line (row) of each sentence of `predict_corpus`

    # data -----------------------------------------------------------------------------------
    def datamodule(self) -> TranslationData:
        data = self.cfg.data
        if "source_tokenizer" not in self.state:
            for stage in ("val", "test"):  # a missing or unreadable one fails now, not after training
                self._corpus(stage)
            self._fit_tokenizers(self._corpus("train"))
            self.state["direction"] = [str(data.source), str(data.target)]
        elif (trained := self.state.get("direction", [])) != (asked := [str(data.source), str(data.target)]) \
                and len(trained) == 2:
            source, target = trained
            if trained[::-1] == asked:
                raise UserError(f"the model translates {source} -> {target}; task.data.source={data.source} and "
                                f"task.data.target={data.target} ask for the other direction")
            warn_on_rank_zero(f"the model translates {source} -> {target}; the files of task.data.source="
                              f"{data.source} and task.data.target={data.target} are read as those languages")
        self.source_tokenizer = tokenizer_from_state(self.state["source_tokenizer"])
        self.target_tokenizer = tokenizer_from_state(self.state["target_tokenizer"])
        # batches drawn with the run's `seed` (torch's, set by seed_everything): a seed sweep varies the order too
        return TranslationData(self._build, data.batch_size, data.eval_batch_size, data.get("num_workers", 0),
                               seed=torch.initial_seed())

    def _corpus(self, stage: str, keep_empty: bool = False) -> Corpus:
        """The pairs of `stage`'s split (a missing test split of the default stem, `test`, falls back to the validation
        one; a stem the config names otherwise must exist), without those with an empty side unless `keep_empty`."""
        key = f"{stage}+empty" if keep_empty else stage
        if key not in self._corpora:
            data = self.cfg.data
            corpus = read_parallel(data.path, data.splits[stage], data.source, data.target, data.encoding_errors,
                                   keep_empty)
            if corpus is None and stage == "test" and data.splits.test == DEFAULT_TEST_STEM:
                if not {"test", "test+empty"} & set(self._corpora):  # once, for either reading
                    log.warning("%s has no %s split: testing on the validation split", data.path, data.splits.test)
                corpus = self._corpus("val", keep_empty)
            if corpus is None or not corpus.source:
                raise UserError(f"{data.path}: no {data.splits[stage]} pairs (expected {data.splits[stage]}."
                                f"{data.source} + {data.splits[stage]}.{data.target}, optionally .gz, or "
                                f"{data.splits[stage]}.tsv with columns {data.source} and {data.target})")
            self._corpora[key] = corpus
        return self._corpora[key]

    def _fit_tokenizers(self, train: Corpus) -> None:
        tok = self.cfg.tokenizer
        settings = dict(kind=tok.kind, vocab_size=tok.vocab_size, lowercase=tok.lowercase,
                        min_frequency=tok.min_frequency)
        if tok.joint:
            source = target = train_tokenizer(train.source + train.target, **settings)
        else:
            source, target = (train_tokenizer(texts, **settings) for texts in (train.source, train.target))
        self.state.update(source_tokenizer=tokenizer_state(source), target_tokenizer=tokenizer_state(target),
                          joint=bool(tok.joint))

    def _encoder(self, tokenizer: Any) -> Encoder:
        return Encoder(tokenizer, int(self.cfg.data.max_tokens), self.cfg.data.too_long)

    def _build(self, stage: str) -> PairSet:
        if stage == "predict":
            return self._predict_set()
        corpus = self._corpus(stage)
        sources = self._encoder(self.source_tokenizer)(corpus.source, corpus.lines, corpus.side_file("source"),
                                                       "source")
        targets = self._encoder(self.target_tokenizer)(corpus.target, corpus.lines, corpus.side_file("target"),
                                                       "target")
        keep = [i for i, (s, t) in enumerate(zip(sources, targets)) if s is not None and t is not None]
        if not keep:
            raise UserError(f"{corpus.where}: no {stage} pairs left (empty sentences, and with task.data.too_long=skip "
                            f"those over task.data.max_tokens={self.cfg.data.max_tokens}, are skipped)")
        return PairSet([sources[i] for i in keep], [targets[i] for i in keep],  # type: ignore[misc]
                       [corpus.target[i] for i in keep], BOS)

    def _predict_set(self) -> PairSet:
        """The lines of `predict.input` (default: the test split's source side), every line kept."""
        path = self.cfg.predict.get("input")
        corpus = read_source_text(str(path), self.cfg.data.encoding_errors) if path else self._corpus("test", True)
        if not corpus.source:
            raise UserError(f"{corpus.where}: nothing to translate (no lines)")
        self.input_rows = len(corpus.source)
        if self.cfg.predict.get("split_sentences", True):  # checkpoints from before the setting: its default
            corpus, self.row_of = split_sentences(corpus)
        else:
            self.row_of = list(range(len(corpus.source)))
        self.predict_corpus = corpus
        ids = self._encoder(self.source_tokenizer)(corpus.source, corpus.lines, corpus.side_file("source"), "source")
        empty = [i for i, text in enumerate(corpus.source) if not text.strip()]
        warn_lines(corpus.where, [corpus.lines[i] for i in empty], "empty line, written as an empty line")
        self.blank = set(empty) | {i for i, x in enumerate(ids) if x is None}
        # a line with a sentence skipped as too long (too_long=skip) is written empty, not with a sentence missing
        self.skipped_rows = {self.row_of[i] for i, x in enumerate(ids) if x is None}
        eos = self.source_tokenizer.eos_token_id
        return PairSet([x if x is not None else [eos] for x in ids], None, None, BOS)

    # model and training ---------------------------------------------------------------------
    def build_model(self, backbone: BackboneFactory) -> Seq2Seq:
        model = self.cfg.model
        return Seq2Seq(
            backbone,
            len(tokenizer_from_state(self.state["source_tokenizer"])),
            len(tokenizer_from_state(self.state["target_tokenizer"])),
            model.embed_size,
            attention=model.attention,
            dropout=model.dropout,
            tie_embeddings=model.tie_embeddings,
            share_embeddings=self.state["joint"],
            bidirectional_encoder=model.bidirectional_encoder,
        )

    def step(self, model: Seq2Seq, batch: dict[str, Any], stage: Stage) -> StepOutput:
        logits = model(batch["source"], batch["source_lengths"], batch["target_in"], batch["target_lengths"])
        flat, gold = logits.flatten(0, 1), batch["target_out"].flatten()
        loss = F.cross_entropy(flat, gold, ignore_index=PAD_ID, label_smoothing=float(self.cfg.model.label_smoothing))
        if stage != "train":
            nll = F.cross_entropy(flat, gold, ignore_index=PAD_ID, reduction="none").view(len(logits), -1).sum(1)
            self._collect(model, batch, stage, nll)
        return StepOutput(loss, len(batch["source"]), loss_weight=(gold != PAD_ID).sum())

    def _collect(self, model: Seq2Seq, batch: dict[str, Any], stage: Stage, nll: Tensor) -> None:
        """Each pair's translation, reference, target NLL (`nll`, summed over its tokens) and token count, by index."""
        decode = self.cfg.decode
        beam = decode.val_beam_size if stage == "val" else decode.beam_size
        hypotheses = [self.detokenize(h.tokens) for h in self.translate(model, batch, beam)]
        rows = zip(hypotheses, batch["references"], nll.tolist(), batch["target_lengths"].tolist())
        self._scores.setdefault(stage, {}).update(zip(batch["index"].tolist(), rows))

    def epoch_end(self, stage: Stage) -> dict[str, float]:
        """sacreBLEU `bleu` and `chrf` of the epoch's translations, and `perplexity` per target token."""
        if stage == "train":
            return {}
        # corpus scores over every DDP process's sentences, each once (a sampler pads shares with repeats)
        pairs = gather_dict(self._scores.pop(stage, {}))
        if not pairs:
            return {}
        hypotheses, references, nlls, lengths = zip(*(pairs[i] for i in sorted(pairs)))
        nll, tokens = sum(nlls), sum(lengths)
        result = corpus_scores(list(hypotheses), list(references), self.lowercase, str(self.cfg.data.target),
                               self.warn_once)  # the fallback once per run, not at every validation
        log.info("%s: BLEU %.2f (%s), chrF %.2f (%s)", stage, result["bleu"], result.pop("bleu_signature"),
                 result["chrf"], result.pop("chrf_signature"))
        return {**result, "perplexity": perplexity(nll, max(tokens, 1))}

    # decoding and artifacts -----------------------------------------------------------------
    def translate(self, model: Seq2Seq, batch: dict[str, Any], beam: int) -> list[Hypothesis]:
        """Decode a batch: greedy for `beam` 1, else beam search, under the `decode` length rules."""
        decode = self.cfg.decode
        source, lengths = batch["source"], batch["source_lengths"]
        limit = max_lengths(lengths, decode.max_length_ratio, decode.max_length_extra, decode.max_length)
        with eval_mode(model):
            if beam == 1:
                return greedy(model, source, lengths, limit)
            return beam_search(model, source, lengths, limit, beam, decode.length_penalty, decode.early_stopping)

    @property
    def lowercase(self) -> bool:
        """Whether the target tokenizer lowercases (then its translations are scored case-insensitively)."""
        return self.target_tokenizer.backend_tokenizer.normalizer.normalize_str("A") == "a"

    def detokenize(self, ids: list[int]) -> str:
        return self.target_tokenizer.decode(ids, skip_special_tokens=True)

    def predict_step(self, model: Seq2Seq, batch: dict[str, Any]) -> dict[str, Any]:
        hypotheses = self.translate(model, batch, int(self.cfg.decode.beam_size))
        keep = bool(self.cfg.predict.attention)  # else not held for the whole input (a few KB a sentence)
        return {"index": batch["index"].cpu(), "tokens": [h.tokens for h in hypotheses],
                "attention": [h.attention.float().cpu() if keep else None for h in hypotheses],  # bf16: no numpy
                "score": torch.tensor([h.score for h in hypotheses]), "ended": [h.ended for h in hypotheses]}

    def describe_sequence(self, datamodule: TranslationData, batch: dict[str, Any], sample: int) -> SequenceView:
        """The source sentence (and its line) and its tokens, which the encoder reads."""
        corpus, i = self.predict_corpus, int(batch["index"][sample])
        assert corpus is not None, "datamodule() reads the prediction input first"
        ids = batch["source"][sample, : int(batch["source_lengths"][sample])]
        return SequenceView(f"{corpus.where}:{corpus.lines[i]}: {corpus.source[i]}",
                            token_labels(self.source_tokenizer, ids))

    def _attention_records(self, kept: list[int], by_index: dict[int, tuple[Any, Tensor, float]], dataset: PairSet,
                           out_dir: Path, plots: list[Path]) -> Iterator[dict[str, Any]]:
        """attention.jsonl's records of sentences `kept` (tokens, score, weights: target x source), made one at a
        time; the first `predict.plots` with a translation are drawn, their PNGs appended to `plots`."""
        corpus, shown = self.predict_corpus, 0
        for i in kept:
            tokens, weights, score = by_index[i]
            source = self.source_tokenizer.convert_ids_to_tokens(dataset.source[i])
            target = self.target_tokenizer.convert_ids_to_tokens(tokens)
            yield {"line": corpus.lines[i], "source": source, "target": target, "score": round(score, 4),
                   "weights": [[round(w, 4) for w in row] for row in weights.tolist()]}
            if shown < self.cfg.predict.plots and len(target):
                number = i - self.row_of.index(self.row_of[i]) + 1  # the sentence's place in its line
                png = out_dir / f"attention_{corpus.lines[i]:05d}{f'_{number}' if number > 1 else ''}.png"
                plots.append(save_alignment(source, target, weights.numpy(), corpus.lines[i], png))
                shown += 1

    def write_predictions(self, predictions: list[Any], datamodule: TranslationData, out_dir: Path) -> list[Path]:
        """`predict.output` (one translation per input line), `attention.jsonl` (tokens, score, weights per
        sentence) and the first `predict.plots` alignment PNGs when `predict.attention`, and the tokenizers
        (`save_pretrained` into `tokenizer/`, or `tokenizer/source` and `tokenizer/target` if separate)."""
        out_dir, settings = Path(out_dir), self.cfg.predict
        dataset: PairSet = datamodule.dataset("predict")  # type: ignore[assignment]
        corpus = self.predict_corpus
        assert corpus is not None
        by_index = {int(i): (t, a, float(s)) for p in predictions
                    for i, t, a, s in zip(p["index"], p["tokens"], p["attention"], p["score"])}
        cut = sorted(corpus.lines[int(i)] for p in predictions for i, e in zip(p["index"], p["ended"])
                     if not e and int(i) not in self.blank)
        warn_lines(corpus.where, cut, "translation stopped at its length limit (task.decode.max_length, "
                   "max_length_ratio, max_length_extra) before its end")
        unread = [i for i in range(len(self.row_of)) if i not in self.blank and i not in by_index]
        if unread:  # trainer.limit_predict_batches stopped prediction early
            log.warning("%d of %d sentences were not translated (prediction stopped early, e.g. by "
                        "trainer.limit_predict_batches); their lines are written empty", len(unread), len(self.row_of))
        empty_rows = self.skipped_rows | {self.row_of[i] for i in unread}
        rows: list[list[str]] = [[] for _ in range(self.input_rows)]  # each input line's translated sentences
        for i, row in enumerate(self.row_of):
            if i in by_index and i not in self.blank:
                rows[row].append(self.detokenize(by_index[i][0]))
        lines = ["" if r in empty_rows else " ".join(row) for r, row in enumerate(rows)]
        paths = [write_lines(lines, out_dir / settings.output)]
        if settings.attention:
            kept = sorted(i for i in set(by_index) - self.blank if self.row_of[i] not in empty_rows)
            records = self._attention_records(kept, by_index, dataset, out_dir, paths)  # plots as it goes
            paths.append(write_jsonl(out_dir / "attention.jsonl", records))
        if self.state["joint"]:
            paths += write_files(out_dir / "tokenizer", self.source_tokenizer.save_pretrained)
        else:
            paths += write_files(out_dir / "tokenizer" / "source", self.source_tokenizer.save_pretrained)
            paths += write_files(out_dir / "tokenizer" / "target", self.target_tokenizer.save_pretrained)
        return paths


OTHER_ARTIFACTS = ("attention.jsonl", "attention_*.png", "tokenizer")
"""What prediction writes beside `predict.output` (`TranslationTask.write_predictions`)."""

SENTENCE_END = re.compile(r"[.!?][\"'”’)]*(?=\s+[\"'“‘(]*([^\W_]))")
"""A sentence's end, where group 1 is a capital or digit (`sentence_ends`): . ! or ? (and closing quotes or
brackets) before a space and a letter or digit."""


def sentence_ends(text: str) -> list[int]:
    """Where `text`'s sentences end: at a `SENTENCE_END` whose next letter is a capital in any script (Latin,
    Cyrillic, Greek, ...) or a digit."""
    return [end.end() for end in SENTENCE_END.finditer(text) if end.group(1).isupper() or end.group(1).isdigit()]


def split_sentences(corpus: Corpus) -> tuple[Corpus, list[int]]:
    """`corpus` with each line's sentences as sentences of their own (same line numbers), and the input row each
    came from."""
    sentences, lines, rows = [], [], []
    for row, (text, line) in enumerate(zip(corpus.source, corpus.lines)):
        ends = [0, *sentence_ends(text), len(text)]
        parts = [part for start, end in pairwise(ends) if (part := text[start:end].strip())] or [""]
        sentences += parts
        lines += [line] * len(parts)
        rows += [row] * len(parts)
    return replace(corpus, source=sentences, target=[], lines=lines), rows


def corpus_scores(hypotheses: list[str], references: list[str], lowercase: bool = False,
                  language: str | None = None, warn: Callable[[str], None] = log.warning) -> dict[str, Any]:
    """sacreBLEU corpus BLEU and chrF (0-100) with their signatures; `lowercase`: case-insensitive (a model whose
    tokenizer lowercases cannot write the references' capitals); `language`, the target's code: BLEU tokenizes
    as sacreBLEU does for it (`zh` by character, `ja`/`ko` with MeCab, installed by `sacrebleu[ja]`/`[ko]`;
    without it, by character, with a warning through `warn`; 13a for languages written with spaces). A region or
    script (`zh-CN`, `ZH_hant`) does not change the choice."""
    from sacrebleu.metrics import BLEU, CHRF

    base = (language or "").lower().replace("_", "-").split("-")[0]
    try:
        bleu = BLEU(lowercase=lowercase, trg_lang=base)
    except RuntimeError as err:  # MeCab missing
        warn(f"BLEU of {language} by character, not sacreBLEU's tokenizer for it: {' '.join(str(err).split())}")
        bleu = BLEU(lowercase=lowercase, tokenize="char")
    chrf = CHRF(lowercase=lowercase)
    return {"bleu": bleu.corpus_score(hypotheses, [references]).score, "bleu_signature": str(bleu.get_signature()),
            "chrf": chrf.corpus_score(hypotheses, [references]).score, "chrf_signature": str(chrf.get_signature())}
