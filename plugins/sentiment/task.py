"""Sentiment analysis: label texts with a bidirectional GRU, with calibrated probabilities and the words
that weighed most."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from gru_suite.atomic import write_text
from gru_suite.config import check_own_splits, name_list
from gru_suite.data import LengthBucketSampler, length_bucket_loader
from gru_suite.distributed import gather_dict
from gru_suite.errors import UserError, not_a_file
from gru_suite.run_folder import keep_earlier_file
from gru_suite.task import (
    BackboneFactory,
    EnsembleMember,
    Pretraining,
    SequenceView,
    Stage,
    StepOutput,
    TaskPlugin,
    eval_mode,
)
from gru_suite.text import (
    ENCODING_ERRORS,
    STDIN,
    TOKENIZER_KINDS,
    encode_as_text,
    pad_ids,
    source_name,
    token_labels,
    tokenizer_from_state,
    tokenizer_state,
    train_tokenizer,
)
from gru_suite_plugins.sentiment import explain
from gru_suite_plugins.sentiment.data import (
    Batch,
    EncodedTexts,
    Example,
    Format,
    SentimentData,
    label_ids,
    label_order,
    read_labelled,
    read_texts,
)
from gru_suite_plugins.sentiment.losses import (
    adversarial_loss,
    classification_loss,
    language_model_loss,
    soft_cross_entropy,
    virtual_adversarial_loss,
)
from gru_suite_plugins.sentiment.model import POOLINGS, SentimentModel, fit_temperature
from gru_suite_plugins.sentiment.scores import classification_scores, confusion
from gru_suite_plugins.sentiment.writer import plot_confusion, write_predictions_csv

log = logging.getLogger(__name__)
ROWS_AT_ONCE = 4096
"""Predicted texts whose offsets are found together as predictions.csv is written."""

CLASS_WEIGHTS = ("balanced", "none")
IMPORTANCE = ("gradient", "pooling")


class SentimentTask(TaskPlugin):
    """Classify texts; the state holds the tokenizer (`tokenizer.json` text), the labels and the class weights.

    Validation fits the model's temperature (its probabilities' calibration, within 0.05..20) and logs `acc`,
    macro `f1`, `ece` (calibrated) and `ece_raw`; testing logs the same and draws the
    confusion matrix into `task.report_dir` (default: the Hydra run folder).
    """

    choices = (("model.pooling", POOLINGS), ("predict.importance", IMPORTANCE), ("model.class_weights", CLASS_WEIGHTS),
               ("tokenizer.kind", TOKENIZER_KINDS), ("data.format", get_args(Format)),
               ("predict.format", get_args(Format)),
               ("data.encoding_errors", ENCODING_ERRORS))
    path_settings = ("data.train", "data.val", "data.test", "pretrain.texts", "distill.teachers", "predict.input")
    trained_settings = ("tokenizer", "model.normalize_embeddings")
    required = ("data.train", "data.text_column", "data.label_column", "data.split_seed", "data.max_tokens",
                "tokenizer.vocab_size", "tokenizer.min_frequency", "model.embed_size", "model.dropout",
                "model.word_dropout", "model.lm_words", "predict.top_words", "predict.html_rows", "predict.show")
    numbers = (*TaskPlugin.numbers, ("data.val_fraction", float, 0), ("data.max_tokens", int, 1),
               ("data.split_seed", int, 0),
               ("tokenizer.vocab_size", int, 1), ("tokenizer.min_frequency", int, 0), ("model.embed_size", int, 1),
               ("model.dropout", float, 0, 1, True), ("model.word_dropout", float, 0, 1, True),
               ("model.lm_weight", float, 0),
               ("model.lm_words", int, 1), ("model.adversarial_eps", float, 0),
               ("model.virtual_adversarial_eps", float, 0), ("pretrain.epochs", int, 0),
               ("distill.weight", float, 0, 1), ("distill.copies", int, 0), ("distill.word_drop", float, 0, 1),
               ("distill.ngram", float, 0, 1),
               ("predict.top_words", int, 0), ("predict.html_rows", int, 0), ("predict.show", int, 0),
               ("predict.batch_size", int, 1))

    def __init__(self, cfg: DictConfig, state: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg, state)
        self.tokenizer = tokenizer_from_state(self.state["tokenizer"]) if "tokenizer" in self.state else None
        self.model: SentimentModel | None = None
        self._outputs: dict[str, dict[int, tuple[Tensor, Tensor]]] = {}  # stage -> example -> (logits, label)
        self._files: dict[str, list[Example]] = {}
        self._soft_targets: Tensor | None = None  # the teachers' probabilities per training text (`task.distill`)
        self._class_weights: Tensor | None = None  # state["class_weights"] on the model's device, built once

    @property
    def labels(self) -> list[str]:
        return self.state["labels"]

    # --- data ---------------------------------------------------------------------------------------------

    def datamodule(self) -> SentimentData:
        if self.tokenizer is None:  # training: what later stages read is checked before it
            check_own_splits(self.cfg.data, {
                "val": "task.data.val, or null to hold out task.data.val_fraction of the training texts",
                "test": "task.data.test, or null to test on the validation texts"})
            self._check_prediction_settings()
            self._check_input_files()
            self._fit(self._examples("train"))
            self._check_teachers()
            if self.cfg.data.get("test"):
                label_ids(self._read(self.cfg.data.test), self.labels)  # an unseen test label fails before training
        return self._data(self._encoded)

    def _data(self, load: Callable[[str], EncodedTexts]) -> SentimentData:
        data = self.cfg.data
        # batches drawn with the run's `seed` (torch's, set by seed_everything): a seed sweep varies the order too
        predict_batch = int(self.cfg.predict.get("batch_size") or data.batch_size)  # checkpoints before the option
        return SentimentData(load, int(data.batch_size), int(data.get("num_workers", 0)), torch.initial_seed(),
                             predict_batch)

    def _check_prediction_settings(self) -> None:
        """Prediction's input file and importance, checked before training rather than after it."""
        self._importance()
        source = self.cfg.predict.get("input")
        if source and str(source) != STDIN and not Path(source).is_file():
            raise UserError(f"task.predict.input: {not_a_file(source)}")

    def _pretrain(self) -> tuple[int, list[str]]:
        """`task.pretrain`'s epochs and text files (checkpoints from before the option have no block)."""
        block = self.cfg.get("pretrain") or {}
        return int(block.get("epochs") or 0), name_list(block.get("texts"), "task.pretrain.texts")

    def _teachers(self) -> list[str]:
        """`task.distill.teachers` (checkpoints from before the option have no block)."""
        return name_list((self.cfg.get("distill") or {}).get("teachers"), "task.distill.teachers")

    def _teacher_checkpoint(self, path: str) -> dict[str, Any]:
        """The checkpoint of the teacher at `path`, read (its tensors mapped, not loaded) and checked: a model of
        this task and of the training labels."""
        from gru_suite.checkpoint import read_checkpoint, stored_config
        from gru_suite.module import CHECKPOINT_KEY

        try:
            checkpoint = read_checkpoint(path)
        except UserError as err:
            raise UserError(f"task.distill.teachers: {err}") from err
        name, labels = stored_config(checkpoint).task.name, checkpoint[CHECKPOINT_KEY]["task_state"].get("labels")
        if name != self.cfg.name:
            raise UserError(f"task.distill.teachers: {path} holds a {name} model; a teacher must be a {self.cfg.name} "
                            f"model of the training labels {self.labels}")
        if labels != self.labels:
            raise UserError(f"task.distill.teachers: {path} holds a model of labels {labels}; a teacher must know "
                            f"the training labels {self.labels}")
        return checkpoint

    def _distillation_set(self, examples: list[Example]) -> tuple[list[Example], Tensor]:
        """The training examples plus `distill.copies` altered copies of each (`altered_copy`), and each one's
        mean of the teachers' calibrated probabilities (N, C): the soft targets of knowledge distillation
        (Hinton et al. 2015), here from an ensemble into one model. A copy's label is the teachers' choice.
        Each teacher must be a sentiment model of this task's labels; it reads the texts with its own tokenizer."""
        from gru_suite.checkpoint import restore

        distill = self.cfg.distill
        rng = random.Random(int(self.cfg.data.get("split_seed", 0)))
        drop, ngram = float(distill.get("word_drop") or 0), float(distill.get("ngram") or 0)
        copies = [Example(altered_copy(e.text, drop, ngram, rng), None, f"{e.where} (copy {n + 1})")
                  for n in range(int(distill.get("copies") or 0)) for e in examples]
        texts = [e.text for e in (*examples, *copies)]
        total = torch.zeros(len(texts), len(self.labels))
        for path in self._teachers():
            total += restore(self._teacher_checkpoint(path), source=path).task.probabilities(texts)
        mean = total / len(self._teachers())
        chosen = mean.argmax(1).tolist()
        agree = sum(c == i for c, i in zip(chosen, label_ids(examples, self.labels))) / len(examples)
        log.info("distilling %d teachers: their mean probabilities pick the given label of %.1f%% of the %d "
                 "training texts; %d altered copies", len(self._teachers()), 100 * agree, len(examples), len(copies))
        labelled = [Example(e.text, self.labels[c], e.where) for e, c in zip(copies, chosen[len(examples):])]
        return [*examples, *labelled], mean

    def _check_teachers(self) -> None:
        """Every teacher is readable and fits (`_teacher_checkpoint`), before any training; copies ask for them."""
        for path in self._teachers():
            self._teacher_checkpoint(path)
        if int((self.cfg.get("distill") or {}).get("copies") or 0) and not self._teachers():
            raise UserError("task.distill.copies: altered copies are labelled by teachers; set task.distill.teachers "
                            "too, or copies=0")

    def _check_input_files(self) -> None:
        """The pre-training texts and the teachers' checkpoints exist, before the tokenizer is trained."""
        for field, paths in (("pretrain.texts", self._pretrain()[1]), ("distill.teachers", self._teachers())):
            for path in paths:
                if not Path(path).is_file():
                    raise UserError(f"task.{field}: {not_a_file(path)}")

    def _importance(self) -> str:
        return self.cfg.predict.importance  # one of IMPORTANCE (`choices`)

    def _fit(self, train: list[Example]) -> None:
        """Tokenizer, label set and class weights from the training examples."""
        tok, weighting = self.cfg.tokenizer, self.cfg.model.class_weights  # one of CLASS_WEIGHTS (`choices`)
        labels = label_order([e.label for e in train])
        if len(labels) < 2:
            raise UserError(f"{self.cfg.data.train}: every training text has the label {labels[0]!r}; "
                            "a classifier needs at least two labels")
        counts = torch.bincount(torch.tensor(label_ids(train, labels)), minlength=len(labels)).float()
        in_file = Counter(e.label for e in self._read(self.cfg.data.train))  # not only the share training keeps
        for label in labels:
            if in_file[label] == 1:
                where = next(e.where for e in train if e.label == label)
                log.warning("%s: label %r occurs only once in training: a row without its label, or in the "
                            "wrong column?", where, label)
        weights = counts.sum() / (len(labels) * counts) if weighting == "balanced" else torch.ones(len(labels))
        self.tokenizer = train_tokenizer((e.text for e in train), tok.kind, int(tok.vocab_size), bool(tok.lowercase),
                                         int(tok.min_frequency))
        self.state.update(tokenizer=tokenizer_state(self.tokenizer), labels=labels, class_weights=weights.tolist())
        self._class_weights = None  # built again from these on the next step
        if self.cfg.model.get("normalize_embeddings"):  # the words' frequencies in training, which standardise them
            ids = torch.tensor([i for row in self.encode([e.text for e in train]) for i in row])
            self.state["word_counts"] = torch.bincount(ids, minlength=len(self.tokenizer)).tolist()
        log.info("%d training texts, labels %s (counts %s), vocabulary %d", len(train), labels,
                 counts.int().tolist(), len(self.tokenizer))

    def _read(self, path: str) -> list[Example]:
        if path not in self._files:
            data = self.cfg.data
            self._files[path] = read_labelled(path, data.format, data.text_column, data.label_column,
                                              data.encoding_errors)
        return self._files[path]

    def _examples(self, stage: str) -> list[Example]:
        """A split's examples: its own file, else a held-out share of train (val), else val (test)."""
        data = self.cfg.data
        if stage == "predict":
            return self._predict_examples()
        if stage == "test" and data.get("test"):
            return self._read(data.test)
        if data.get("val"):
            if stage == "test":
                self.warn_once(f"no task.data.test: testing on the validation texts {source_name(data.val)}")
            return self._read(data.train if stage == "train" else data.val)
        if stage == "test":
            self.warn_once("no task.data.test or task.data.val: testing on the validation share of "
                            f"{source_name(data.train)}")
        train = self._read(data.train)
        if not 0 < data.val_fraction < 1:
            raise UserError(f"task.data.val_fraction must be between 0 and 1, got {data.val_fraction}")
        if len(train) < 2:
            raise UserError(f"{data.train}: one labelled text, too few to hold out a validation share "
                            "(give task.data.val)")
        count = min(len(train) - 1, max(1, round(data.val_fraction * len(train))))  # each side keeps a text
        held = set(random.Random(data.get("split_seed", 0)).sample(range(len(train)), count))
        by_label: dict[str | None, list[int]] = {}
        for i, example in enumerate(train):
            by_label.setdefault(example.label, []).append(i)
        for label, rows in by_label.items():
            if held.issuperset(rows):  # a rare label drawn wholly into the validation share: one text trains on it
                held.discard(rows[0])
        if not held:
            hint = (f"; each has a label of its own: is task.data.label_column={data.label_column} a column of texts "
                    "or ids?") if len(by_label) == len(train) else ""
            raise UserError(f"{data.train}: {len(train)} labelled texts, too few to hold out a validation share and "
                            f"keep every label in training (give task.data.val){hint}")
        return [e for i, e in enumerate(train) if (i in held) == (stage != "train")]

    def _predict_examples(self) -> list[Example]:
        predict, data = self.cfg.predict, self.cfg.data
        if not predict.get("input"):
            return self._examples("test")
        setting = ("task.predict.column" if predict.get("column")
                   else "task.data.text_column; task.predict.column chooses the prediction input's")
        return read_texts(predict.input, predict.format, predict.get("column") or data.text_column,
                          data.encoding_errors, setting)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, cut at `data.max_tokens` (a text of no tokens becomes one unknown token)."""
        assert self.tokenizer is not None, "datamodule() fits the tokenizer first"
        limit = int(self.cfg.data.max_tokens)
        ids = encode_as_text(self.tokenizer, texts, truncation=True, max_length=limit)["input_ids"]
        return [row or [self.tokenizer.unk_token_id] for row in ids]

    def _encoded(self, stage: str) -> EncodedTexts:
        examples = self._examples(stage)
        if stage == "train" and self._teachers():
            examples, self._soft_targets = self._distillation_set(examples)
        return self._texts(examples, None if stage == "predict" else label_ids(examples, self.labels))

    def _texts(self, examples: list[Example], labels: list[int] | None) -> EncodedTexts:
        return EncodedTexts(examples, self.encode([e.text for e in examples]), labels)

    def probabilities(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Calibrated class probabilities (N, C) of `texts`, in their order, from the model in eval mode (on the
        CPU, in batches of similar length; the model's mode is restored afterwards)."""
        assert self.model is not None, "build_model() first"
        ids, probs = self.encode(texts), torch.empty(len(texts), len(self.labels))
        with eval_mode(self.model), torch.inference_mode():
            for chunk in LengthBucketSampler(range(len(ids)), batch_size, lengths=[len(row) for row in ids]):
                probs[chunk] = self.model.probabilities(*pad_ids([ids[i] for i in chunk]))[0]
        return probs

    # --- model, loss and scores ---------------------------------------------------------------------------

    def build_model(self, backbone: BackboneFactory) -> SentimentModel:
        assert self.tokenizer is not None, "datamodule() fits the tokenizer first"
        model = self.cfg.model
        wants_lm = model.get("lm_weight") or self._pretrain()[0]
        lm_words = min(int(model.get("lm_words", 0)), len(self.tokenizer)) if wants_lm else 0
        self.model = SentimentModel(backbone, len(self.tokenizer), len(self.labels), int(model.embed_size),
                                    model.pooling, float(model.dropout), bool(model.bidirectional), lm_words,
                                    float(model.get("word_dropout", 0.0)), self.state.get("word_counts"))
        return self.model

    def step(self, model: SentimentModel, batch: Batch, stage: Stage) -> StepOutput:
        """Class-weighted cross-entropy; in training, with teachers (`distill`), mixed with the cross-entropy
        against their probabilities by `distill.weight`, plus `lm_weight` x the language-model loss, the same
        classification loss of the texts' adversarial copies (`adversarial_eps`) and the virtual adversarial loss
        (`virtual_adversarial_eps`), each if enabled."""
        embedded = model.embed(batch.ids)
        h = model.states(embedded, batch.lengths)
        logits, _ = model.classify(embedded, batch.lengths, h)
        weights = self._class_weights_on(logits.device)
        targets, metrics = None, {}
        if stage == "train" and self._soft_targets is not None:
            self._soft_targets = self._soft_targets.to(logits.device)
            targets = self._soft_targets[batch.index]
            metrics["distill_loss"] = soft_cross_entropy(logits.detach(), targets, weights[batch.labels])
        loss_of = partial(classification_loss, labels=batch.labels, weights=weights, targets=targets,
                          share=float(self.cfg.distill.get("weight") or 0) if targets is not None else 0.0)
        loss = loss_of(logits)
        eps = float(self.cfg.model.get("adversarial_eps") or 0.0)
        if stage == "train" and eps and embedded.requires_grad:  # a loss computed without gradients skips it
            metrics["adv_loss"] = adversarial_loss(model, embedded, batch.lengths, loss, eps, loss_of)
        if stage == "train" and self.cfg.model.get("lm_weight"):
            states = model.language_states(embedded, batch.lengths, h)
            metrics["lm_loss"] = model.lm_loss(states, batch.ids, batch.lengths)
            loss = loss + float(self.cfg.model.lm_weight) * metrics["lm_loss"]
        if "adv_loss" in metrics:  # its direction came from the classification loss alone
            loss = loss + metrics["adv_loss"]
        vat_eps = float(self.cfg.model.get("virtual_adversarial_eps") or 0.0)
        if stage == "train" and vat_eps and embedded.requires_grad:
            metrics["vat_loss"] = virtual_adversarial_loss(model, embedded, batch.lengths, logits, vat_eps)
            loss = loss + metrics["vat_loss"]
        if stage != "train":
            rows = zip(batch.index.tolist(), logits.detach().cpu(), batch.labels.cpu())
            self._outputs.setdefault(stage, {}).update((index, (row, label)) for index, row, label in rows)
        return StepOutput(loss, len(batch.labels), metrics, loss_weight=weights[batch.labels].sum())

    def _class_weights_on(self, device: torch.device) -> Tensor:
        if self._class_weights is None or self._class_weights.device != device:
            self._class_weights = torch.tensor(self.state["class_weights"], device=device)
        return self._class_weights

    def pretraining(self) -> Pretraining | None:
        """`pretrain.epochs` of the bidirectional language model (`SentimentModel.lm_loss`) on `pretrain.texts`
        (files of unlabelled texts, one per line or a table's text column), else on the training texts:
        embeddings and GRU learn the language before the classifier trains on them."""
        epochs, files = self._pretrain()
        if not epochs:
            return None
        data = self.cfg.data
        examples = ([e for path in files for e in read_texts(path, "auto", data.text_column, data.encoding_errors)]
                    if files else self._examples("train"))
        texts = EncodedTexts(examples, self.encode([e.text for e in examples]), None)
        log.info("pre-training texts: %d (%d tokens)", len(texts), sum(texts.lengths))
        loader = length_bucket_loader(texts, texts.lengths, int(data.batch_size), shuffle=True,
                                      seed=torch.initial_seed(), num_workers=int(data.get("num_workers", 0)))
        return Pretraining(epochs, loader, language_model_loss)

    def epoch_end(self, stage: Stage) -> dict[str, float]:
        """Scores over the whole pass; validation first refits the temperature, testing draws the confusion matrix."""
        if stage == "train" or self.model is None:
            return {}
        outputs = gather_dict(self._outputs.pop(stage, {}))  # every DDP process's share of the texts
        if not outputs:
            return {}
        logits, labels = (torch.stack(parts) for parts in zip(*(outputs[i] for i in sorted(outputs))))
        if stage == "val":
            with torch.inference_mode(False):
                self.model.temperature.fill_(fit_temperature(logits, labels))
            if bool((logits.argmax(-1) == labels).all()):  # said once a run, not every epoch
                self.warn_once("every validation text is classified right, so they calibrate nothing: the "
                                "probabilities stay the model's own (temperature 1); hold out more or harder texts "
                                "(task.data.val or task.data.val_fraction) to calibrate them")
        scores = classification_scores(logits, labels, float(self.model.temperature))
        if stage == "test" and (folder := self.report_dir()) is not None:
            self._draw_confusion(confusion(logits, labels).numpy(), folder / "confusion_matrix.png",
                                 f"test: accuracy {scores['acc']:.3f}, macro F1 {scores['f1']:.3f}")
        return scores

    @rank_zero_only
    def _draw_confusion(self, matrix: np.ndarray, path: Path, title: str) -> None:
        """The confusion matrix as a PNG at `path`, an earlier one there set aside (as eval's `test_metrics.json`)."""
        keep_earlier_file(path)
        log.info("wrote %s", plot_confusion(matrix, self.labels, path, title))

    def report_dir(self) -> Path | None:
        """`task.report_dir`, else the Hydra run folder; None outside a Hydra run."""
        if self.cfg.get("report_dir"):
            return Path(self.cfg.report_dir)
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None

    # --- predictions ----------------------------------------------------------------------------------------

    def predict_step(self, model: SentimentModel, batch: Batch) -> dict[str, Tensor]:
        """Calibrated probabilities (B, C), token importance (B, T) and lengths of the examples `index`.

        `predict.importance`: `gradient` (gradient x input toward the predicted label) or `pooling`
        (the attention weights, or each token's share of the max-pooled features).
        """
        importance = self._importance()
        explain_with = model.saliency if importance == "gradient" else model.probabilities
        probs, weights = explain_with(batch.ids, batch.lengths)
        return {"index": batch.index.cpu(), "probs": probs.cpu(), "weights": weights.cpu(),
                "lengths": batch.lengths.cpu()}

    def describe_sequence(self, datamodule: SentimentData, batch: Batch, sample: int) -> SequenceView:
        """The text (and its line) and its tokens."""
        example = datamodule.dataset("predict").examples[int(batch.index[sample])]
        ids = batch.ids[sample, : int(batch.lengths[sample])]
        return SequenceView(f"{example.where}: {example.text}", token_labels(self.tokenizer, ids))

    def ensemble_input(self, first: TaskPlugin, datamodule: SentimentData) -> SentimentData:
        """The texts `datamodule` (the `first` model's) has read for prediction, in this model's tokens; this
        model must know `first`'s labels. Its word importance goes unused, so it predicts with the pooling
        weights (no backward pass)."""
        if first.state.get("labels") != self.labels:
            raise UserError(f"its labels {self.labels} differ from the first model's {first.state.get('labels')}; "
                            "an ensemble's models must know the same labels")
        self.cfg.predict.importance = "pooling"
        examples = datamodule.dataset("predict").examples
        return self._data(lambda stage: self._texts(examples, None))

    def ensemble(self, members: Sequence[EnsembleMember]) -> list[dict[str, Tensor]]:
        """Each text's mean of the members' calibrated probabilities (members of the same labels, as
        `ensemble_input` checks); its word importance stays the first member's, which explains that model's
        label (it may differ from the ensemble's)."""
        first = members[0]
        by_text = [probabilities_by_text(m.predictions) for m in members]
        combined = []
        for batch in first.predictions:
            mean = torch.stack([torch.stack([probs[int(i)] for i in batch["index"]]) for probs in by_text]).mean(0)
            combined.append({**batch, "probs": mean})
        return combined

    def write_predictions(self, predictions: list[Any], datamodule: SentimentData, out_dir: Path) -> list[Path]:
        """`predictions.csv` (every text) and `explanations.html` (the first `predict.html_rows`), in input order."""
        if not predictions:
            return []
        examples = datamodule.dataset("predict").examples
        found = {int(i): (p, w[:n]) for batch in predictions
                 for i, p, w, n in zip(batch["index"], batch["probs"], batch["weights"], batch["lengths"].tolist())}
        page: list[tuple[str, str, float, str]] = []
        rows = self._prediction_rows([(examples[i], *found[i]) for i in sorted(found)], page)
        out_dir = Path(out_dir)
        csv_path = write_predictions_csv(out_dir / "predictions.csv", rows, self.labels)  # made as they are written
        return [csv_path, write_text(out_dir / "explanations.html", explain.html_page("Sentiment predictions", page))]

    def _prediction_rows(self, predicted: list[tuple[Any, Tensor, Tensor]], page: list) -> Iterator[dict[str, str]]:
        """predictions.csv's rows of (example, probabilities, token weights), their texts' offsets found
        `ROWS_AT_ONCE` at a time (all at once held gigabytes for a million texts); the first `predict.html_rows` go
        to `page` for explanations.html, the first `predict.show` to the log."""
        predict = self.cfg.predict
        top_words, html_rows, show = int(predict.top_words), int(predict.html_rows), int(predict.show)
        for start in range(0, len(predicted), ROWS_AT_ONCE):
            part = predicted[start : start + ROWS_AT_ONCE]
            encoding = encode_as_text(self.tokenizer, [example.text for example, _, _ in part], truncation=True,
                                      max_length=int(self.cfg.data.max_tokens), return_offsets_mapping=True)
            for at, (example, probs, weights) in enumerate(part):
                row, text = start + at, example.text
                words = explain.word_weights(text, encoding["offset_mapping"][at], encoding.word_ids(at), weights)
                best = int(probs.argmax())
                label = self.labels[best]
                yield {"line": example.where, "text": text, "label": label,
                       **{f"prob_{name}": f"{float(p):.6f}" for name, p in zip(self.labels, probs)},
                       "top_words": " ".join(explain.top_words(text, words, top_words))}
                if row < html_rows:
                    page.append((example.where, label, float(probs[best]), explain.highlight_html(text, words)))
                if row < show:
                    log.info("%s  %s %.2f  %s", explain.terminal_text(example.where), explain.terminal_text(label),
                             float(probs[best]), explain.highlight_terminal(text, words, top_words))


def probabilities_by_text(predictions: Sequence[dict[str, Tensor]]) -> dict[int, Tensor]:
    """Each text's probabilities in `predict_step` outputs, by its example index."""
    return {int(i): p for batch in predictions for i, p in zip(batch["index"], batch["probs"])}


def altered_copy(text: str, word_drop: float, ngram: float, rng: random.Random) -> str:
    """`text` with each word left out with probability `word_drop`, then, with probability `ngram`, cut to a
    random run of 1-5 of its words (the augmentation of Tang et al. 2019 for distillation); never empty."""
    words = text.split()
    kept = [word for word in words if rng.random() >= word_drop] or [rng.choice(words)]
    if rng.random() < ngram:
        size = min(rng.randint(1, 5), len(kept))
        start = rng.randint(0, len(kept) - size)
        kept = kept[start:start + size]
    return " ".join(kept)
