"""Sentiment benchmark: SST-2 sentence-level accuracy, macro F1 and calibration, and prediction speed.

    python benchmarks/sentiment.py --train ../shared/data/sentiment/sst2_kim2014/stsa.binary.train \
        --dev ../shared/data/sentiment/sst2_kim2014/stsa.binary.dev \
        --phrases ../shared/data/sentiment/sst2/train.tsv --minutes 40

Trains `experiment=sst2` from scratch (no downloaded embeddings) on the training sentences, plus, with
`--phrases`, the labelled phrases of GLUE's SST-2 `train.tsv`. A fixed 10% of the training sentences is
held out for validation (early stopping, checkpoint choice and the temperature); phrases that equal a
dev or held-out sentence, or are spans of at least `--leak-tokens` words of one, are dropped. The best
checkpoint is then scored once on `--dev`: accuracy, macro F1, expected calibration error (15 bins)
before and after temperature scaling. Prediction speed is sentences per second through tokenizer and
model (batches of 256, in length order) on the CPU, with each kind of word importance. Prints the
tables, then one JSON line.

`--seed S` may be repeated: one model per seed, trained one after another, each with its own held-out
10%; their ensemble (each sentence's mean of the models' calibrated probabilities, `SentimentTask.ensemble`,
as `gru-suite-predict ensemble=[...]` computes it) is then scored on `--dev` too; `--keep-checkpoints DIR`
keeps each model's best checkpoint for that command. The JSON line is then
`{"runs": [one per seed], "ensemble": {...}}` instead of the single run's object.

`--pretrain-epochs N` first pre-trains embeddings and GRU as a bidirectional language model
(`task.pretrain`) for N epochs on unlabelled text: the training sentences (not the held-out ones), plus
the lines of each `--unlabelled` file (e.g. Multi30k's English `train.en.gz`).

`--teacher CKPT` (repeatable) distils those models into each one trained (`task.distill`): the training loss
mixes the labels with the teachers' mean calibrated probabilities for each training text, by
`task.distill.weight` (an override, default 0.5). With the checkpoints an earlier run kept
(`--keep-checkpoints`), the ensemble of several seeds is taught to one model.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import exit_code, fit_and_test, positive_int, quiet, quote, table  # noqa: E402


def is_sst2(path: Path) -> bool:
    """Whether `path` is an SST-2 file (`stsa.binary.dev`, `sst2/dev.tsv`) by its name or its folder's: the
    published figures are SST-2's, not another corpus's."""
    return any(tag in name.lower() for name in (path.name, path.resolve().parent.name) for tag in ("sst", "stsa"))


REFERENCES = {"Tree-LSTM (Tai et al. 2015, test)": 0.880, "BiLSTM from scratch (test, typical)": 0.85,
              "goal of issue 7": 0.87}
VAL_FRACTION = 0.1


def _spans(sentence: str, min_tokens: int) -> set[str]:
    words = sentence.split()
    return {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + min_tokens, len(words) + 1)}


def read_format(path: Path) -> str:
    """`lines` (`label sentence`), `csv` or `tsv`: by the name's suffix, or `tsv` for a file whose first line is a
    tab-separated header naming `label` (GLUE's `sentence<TAB>label`) whatever its name."""
    from gru_suite.text import read_lines
    from gru_suite_plugins.sentiment.data import table_format

    fmt, first = table_format(path, "auto"), read_lines(path)[:1]
    return "tsv" if fmt == "lines" and first and "label" in [name.strip() for name in first[0].split("\t")] else fmt


def read_sst(path: Path) -> list[Any]:
    """The labelled examples of an SST-2 file: `label sentence` lines, or a table whose text column is `text` or,
    as in GLUE's files, `sentence` (a GLUE file is known by its `sentence<TAB>label` header whatever its name)."""
    from gru_suite.text import read_lines
    from gru_suite_plugins.sentiment.data import DELIMITERS, read_labelled

    fmt = read_format(path)
    if fmt == "lines":
        return read_labelled(path, fmt)
    header = [name.strip() for name in next(csv.reader(read_lines(path)[:1], delimiter=DELIMITERS[fmt]), [])]
    return read_labelled(path, fmt, "sentence" if "sentence" in header and "text" not in header else "text")


def build_training_files(train: Path, dev: Path, phrases: Path | None, leak_tokens: int, seed: int,
                         folder: Path, sentence_copies: int = 1) -> dict[str, Any]:
    """`train.txt` and `val.txt` (`label sentence` lines): held-out sentences, and the rest (each
    `sentence_copies` times) plus clean phrases."""
    sentences = read_sst(train)
    held = set(random.Random(seed).sample(range(len(sentences)), round(VAL_FRACTION * len(sentences))))
    val = [e for i, e in enumerate(sentences) if i in held]
    rows = [e for i, e in enumerate(sentences) if i not in held]
    stats: dict[str, Any] = {"train_sentences": len(rows), "sentence_copies": sentence_copies,
                             "val_sentences": len(val), "phrases_added": 0}
    if phrases is not None:
        protected = [e.text for e in val] + [e.text for e in read_sst(dev)]
        whole = set(protected)
        leaks = set().union(*(_spans(text, leak_tokens) for text in protected)) | whole
        seen = {e.text for e in rows}
        candidates = read_sst(phrases)
        clean = [e for e in candidates if e.text not in leaks and e.text not in seen]
        stats.update(phrases_read=len(candidates), phrases_equal_to_protected=sum(e.text in whole for e in candidates),
                     phrases_dropped_as_leaks=sum(e.text in leaks for e in candidates), phrases_added=len(clean))
    else:
        clean = []
    rows = rows * sentence_copies + clean
    for name, examples in (("train.txt", rows), ("val.txt", val)):
        (folder / name).write_text("".join(f"{e.label} {e.text}\n" for e in examples), encoding="utf-8")
    (folder / "sentences.txt").write_text("".join(f"{e.text}\n" for i, e in enumerate(sentences) if i not in held),
                                          encoding="utf-8")
    return stats


def test_file(dev: Path, folder: Path) -> Path:
    """`dev` for the task's test split: as it is in the `label sentence` layout, else (a table, whose text column
    the task would look for as `text`) rewritten in that layout into `folder`."""
    if read_format(dev) == "lines":
        return dev
    lines = folder / "test.txt"
    lines.write_text("".join(f"{e.label} {e.text}\n" for e in read_sst(dev)), encoding="utf-8")
    return lines


def prediction_speed(task: Any, model: Any, texts: Sequence[str], importance: str, batch_size: int = 256) -> float:
    """Sentences per second: tokenize, pad in length-sorted batches, calibrated probabilities and word
    importance (`gradient`: gradient x input, one backward pass; `pooling`: the pooling's weights)."""
    import torch

    from gru_suite.data import LengthBucketSampler
    from gru_suite.text import pad_ids

    model.eval()
    explain = model.saliency if importance == "gradient" else model.probabilities
    start = time.perf_counter()
    with torch.inference_mode():
        ids = task.encode(texts)
        for chunk in LengthBucketSampler(range(len(ids)), batch_size, lengths=[len(row) for row in ids]):
            explain(*pad_ids([ids[i] for i in chunk]))
    return len(texts) / (time.perf_counter() - start)


def dev_probabilities(task: Any, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Calibrated probabilities of `texts` as one batch of `predict_step` outputs (`index`, `probs`): what
    `gru-suite-predict` computes for them."""
    import torch

    return [{"index": torch.arange(len(texts)), "probs": task.probabilities(texts)}]


def scores(predictions: Sequence[dict[str, Any]], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, macro F1 and ECE of the probabilities in `predictions` against each text's label."""
    import torch

    from gru_suite_plugins.sentiment.scores import classification_scores
    from gru_suite_plugins.sentiment.task import probabilities_by_text

    probs = probabilities_by_text(predictions)
    logits = torch.stack([probs[i] for i in range(len(labels))]).log()  # softmax(log p) = p
    found = classification_scores(logits, torch.tensor(labels), 1.0)
    return {k: found[k] for k in ("acc", "f1", "ece")}


def train_one(args: argparse.Namespace, seed: int, dev: Sequence[Any]) -> tuple[dict[str, Any], Any]:
    """Train and score one model at `seed`; its result row and its `EnsembleMember` on the dev texts."""
    from gru_suite.task import EnsembleMember
    from gru_suite.testing import compose_train_config
    from gru_suite_plugins.sentiment.data import label_ids

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = build_training_files(args.train, args.dev, args.phrases, args.leak_tokens, seed, folder,
                                    args.sentence_copies)
        seconds = int(args.minutes * 60)
        texts = [folder / "sentences.txt", *(path.resolve() for path in args.unlabelled)]
        pretrain = [f"task.pretrain.epochs={args.pretrain_epochs}",
                    f"task.pretrain.texts=[{','.join(quote(path) for path in texts)}]"] if args.pretrain_epochs else []
        teachers = [f"task.distill.teachers=[{','.join(quote(path.resolve()) for path in args.teacher)}]"] \
            if args.teacher else []
        overrides = [
            "experiment=sst2", f"task.data.train={quote(folder / 'train.txt')}",
            f"task.data.val={quote(folder / 'val.txt')}", f"task.data.test={quote(test_file(args.dev, folder))}",
            f"++trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
            "trainer.accelerator=cpu", "logger=none", "callbacks.progress_bar=null", "predict_after_training=false",
            f"task.report_dir={quote(folder)}", *pretrain, *teachers, *args.overrides,
        ]
        run = fit_and_test(compose_train_config("sentiment", overrides, folder / "run"), seed)
        if args.keep_checkpoints:
            shutil.copyfile(run.trainer.checkpoint_callback.best_model_path, args.keep_checkpoints / f"seed{seed}.ckpt")
    dev_texts = [example.text for example in dev]
    speed = {importance: prediction_speed(run.task, run.module.model, dev_texts, importance)
             for importance in ("pooling", "gradient")}
    member = EnsembleMember(f"seed {seed}", run.task, dev_probabilities(run.task, dev_texts))
    epochs = len(run.clock.wall)
    result = {
        "data": {"train": str(args.train), "dev": str(args.dev), "phrases": str(args.phrases) if args.phrases else None,
                 **data},
        "overrides": args.overrides, "threads": args.threads, "seed": seed,
        "dev": {k.removeprefix("test/"): v for k, v in run.test_metrics.items()},
        "best_epoch": run.best_epoch, "epochs_run": epochs, "best_val_f1": run.best_val_loss,
        "train_s_per_epoch": sum(run.clock.wall) / max(epochs, 1), "fit_wall_s": run.fit_wall_s,
        "pretrain": {"epochs": args.pretrain_epochs, "unlabelled": [str(p) for p in args.unlabelled],
                     "wall_s": run.pretrain_wall_s, "final_loss": run.pretrain_loss},
        "teachers": [str(path) for path in args.teacher],
        "predict_sentences_per_s": speed, "parameters": sum(p.numel() for p in run.module.model.parameters()),
    }
    result["dev_predict_acc"] = scores(member.predictions, label_ids(dev, run.task.labels))["acc"]
    if abs(result["dev_predict_acc"] - result["dev"]["acc"]) > 1e-6:  # prediction and the test stage should agree
        print(f"warning: seed {seed}: dev accuracy {result['dev_predict_acc']} through prediction, "
              f"{result['dev']['acc']} through the test stage", file=sys.stderr)
    return result, member


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True,
                        help="stsa.binary.train (`label sentence` lines, or a CSV/TSV with text or sentence and label: "
                             "known by its .csv/.tsv name, or by a tab-separated header naming label)")
    parser.add_argument("--dev", type=Path, required=True,
                        help="stsa.binary.dev, the reported split (same layouts; a held-out test file too: its figures "
                             "go under the JSON key 'dev', the option's name, with its path in data.dev)")
    parser.add_argument("--phrases", type=Path, help="GLUE SST-2 train.tsv (sentence<TAB>label phrases), optional")
    parser.add_argument("--leak-tokens", type=int, default=4,
                        help="drop phrases that are spans of this many words or more of a dev/held-out sentence")
    parser.add_argument("--sentence-copies", type=positive_int, default=1,
                        help="put each training sentence this many times into an epoch, beside the phrases "
                             "(default 1)")
    parser.add_argument("--minutes", type=float, default=40.0,
                        help="wall-time budget for training each model (default 40)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op threads (default 1: fastest on a shared CPU)")
    parser.add_argument("--seed", type=int, action="append",
                        help="one model per seed, trained one after another (each holds out its own 10%%); "
                             "repeat it (--seed 42 --seed 43) to score their ensemble too (default 42)")
    parser.add_argument("--pretrain-epochs", type=int, default=0,
                        help="language-model pre-training epochs on the unlabelled text first (default 0: none)")
    parser.add_argument("--unlabelled", type=Path, action="append", default=[],
                        help="one more unlabelled text file (a text per line, .gz too) for the pre-training; "
                             "repeatable")
    parser.add_argument("--teacher", type=Path, action="append", default=[],
                        help="a trained sentiment checkpoint to distil into each model (task.distill); repeatable")
    parser.add_argument("--keep-checkpoints", type=Path,
                        help="copy each seed's best checkpoint here as seed<S>.ckpt (for gru-suite-predict ensemble=)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. backbone.hidden_size=256")
    args = parser.parse_args(argv)
    args.seed = args.seed or [42]
    if len(set(args.seed)) < len(args.seed):
        parser.error(f"--seed: each seed once (got {args.seed})")
    for path in (args.train, args.dev, args.phrases, *args.unlabelled, *args.teacher):
        if path is not None and not path.is_file():
            print(f"error: {path} not found", file=sys.stderr)
            return 2
    if args.keep_checkpoints:
        kept = {(args.keep_checkpoints / f"seed{seed}.ckpt").resolve() for seed in args.seed}
        if overwritten := [str(path) for path in args.teacher if path.resolve() in kept]:
            parser.error(f"--keep-checkpoints would overwrite the teacher(s) {overwritten}; keep them elsewhere")
        args.keep_checkpoints.mkdir(parents=True, exist_ok=True)
    quiet()
    import torch

    from gru_suite_plugins.sentiment.data import label_ids

    torch.set_num_threads(args.threads)
    dev = read_sst(args.dev)
    results, members = zip(*(train_one(args, seed, dev) for seed in args.seed))
    sst2 = is_sst2(args.dev)
    table(
        f"{'SST-2 sentence level, ' if sst2 else ''}{args.dev.name} (best checkpoint by held-out macro F1)",
        ["model", "seed", "accuracy", "macro F1", "ECE", "ECE raw", "T", "epochs", "s/epoch", "fit s", "pre-train s"],
        [["bi-GRU", r["seed"], r["dev"].get("acc"), r["dev"].get("f1"), r["dev"].get("ece"), r["dev"].get("ece_raw"),
          r["dev"].get("temperature"), r["epochs_run"], r["train_s_per_epoch"], r["fit_wall_s"],
          r["pretrain"]["wall_s"] if r["pretrain"]["epochs"] else "-"] for r in results]
        + [[name, "", value, "", "", "", "", "", "", "", ""] for name, value in REFERENCES.items() if sst2],
    )
    table("training data (first seed)", ["item", "count"], [[k, v] for k, v in results[0]["data"].items()])
    table(f"prediction on CPU ({args.threads} thread(s)), the {len(dev)} sentences of {args.dev.name}",
          ["word importance", *(f"seed {r['seed']}" for r in results)],
          [[name, *(r["predict_sentences_per_s"][name] for r in results)] for name in ("pooling", "gradient")])
    output: dict[str, Any] = dict(results[0]) if len(results) == 1 else {"runs": list(results)}
    if len(members) > 1:
        combined = members[0].task.ensemble(members)
        ensemble = {"seeds": args.seed, **scores(combined, label_ids(dev, members[0].task.labels)),
                    "mean_member_acc": sum(r["dev_predict_acc"] for r in results) / len(results),
                    "predict_sentences_per_s": 1 / sum(1 / r["predict_sentences_per_s"]["pooling"] for r in results)}
        table(f"ensemble of {len(members)} (mean of calibrated probabilities, as gru-suite-predict ensemble=[...])",
              ["accuracy", "macro F1", "ECE", "mean member accuracy", "sentences/s (pooling)"],
              [[ensemble["acc"], ensemble["f1"], ensemble["ece"], ensemble["mean_member_acc"],
                ensemble["predict_sentences_per_s"]]])
        output["ensemble"] = ensemble
    print(json.dumps(output, default=float, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
