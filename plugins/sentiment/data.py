"""Reading labelled and unlabelled texts (CSV/TSV columns, `label sentence` lines, stdin) and batching them.

Rules for bad input, each reported with file and line:

- a text that is empty (or only whitespace) is skipped with a warning;
- a labelled row whose label is missing is skipped with a warning;
- a validation or test label that training never saw is a `UserError`;
- a missing column is a `UserError` listing the columns that exist, a row with more or fewer fields
  than the header one naming its line;
- a training label that occurs only once is named in a warning (by the task, when it fits);
- bytes that are not UTF-8 are a `UserError` (`encoding_errors=replace` decodes them as U+FFFD, with a warning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from gru_suite.data import SplitDataModule
from gru_suite.errors import Skips, UserError
from gru_suite.text import STDIN, EncodingErrorRule, pad_ids, read_lines, read_table, source_name

Format = Literal["auto", "csv", "tsv", "lines"]


@dataclass(frozen=True)
class Example:
    """A text, its label (None when unlabelled) and where it came from (`file:line`)."""

    text: str
    label: str | None
    where: str


DELIMITERS = {"csv": ",", "tsv": "\t"}
"""The field delimiter of each table format."""


def table_format(path: str | Path, fmt: Format) -> Format:
    """`fmt`, with `auto` resolved from the suffix: `.csv` / `.tsv` (also gzipped) are tables, the rest lines."""
    if fmt != "auto":
        if fmt not in ("csv", "tsv", "lines"):
            raise UserError(f"{path}: its format (task.data.format, or task.predict.format for prediction input) must "
                            f"be auto, csv, tsv or lines, got {fmt!r}")
        return fmt
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    return "tsv" if ".tsv" in suffixes else "csv" if ".csv" in suffixes else "lines"


def read_labelled(
    path: str | Path,
    fmt: Format = "auto",
    text_column: str = "text",
    label_column: str = "label",
    encoding_errors: EncodingErrorRule = "error",
) -> list[Example]:
    """Labelled examples from a CSV/TSV with a header (text and label columns) or `label sentence` lines."""
    fmt = table_format(path, fmt)
    if fmt == "lines":
        rows = [(n, _label_sentence(line)) for n, line in enumerate(read_lines(path, encoding_errors), 1)]
    else:
        rows = read_table(path, [text_column, label_column], DELIMITERS[fmt], encoding_errors,
                          ("task.data.text_column", "task.data.label_column"))
    name = source_name(path)  # `<stdin>` for "-"
    skips, examples = Skips(name), []
    for number, (text, label) in rows:
        where = f"{name}:{number}"
        if not text.strip():
            skips.add(where, "empty text")
        elif not label.strip():
            skips.add(where, f"no label for {text.strip()[:40]!r}")
        else:
            examples.append(Example(one_line(text), label.strip(), where))
    skips.report(len(examples))
    if not examples:
        raise UserError(f"{name}: no labelled texts (expected {_expected(fmt, text_column, label_column)})")
    return examples


def one_line(text: str) -> str:
    """`text` with each run of whitespace (a quoted CSV text's line breaks, tabs) as one space: subword
    tokenizers split words at spaces alone."""
    return " ".join(text.split())


def _label_sentence(line: str) -> list[str]:
    """`[sentence, label]` of a `label sentence` line (empty strings where missing)."""
    parts = line.split(maxsplit=1)
    return [parts[1] if len(parts) > 1 else "", parts[0] if parts else ""]


def _expected(fmt: Format, text_column: str, label_column: str) -> str:
    if fmt == "lines":
        return "one `label sentence` per line"
    return f"a header with columns {text_column!r} and {label_column!r}"


def read_texts(source: str | Path, fmt: Format = "auto", column: str = "text",
               encoding_errors: EncodingErrorRule = "error", setting: str = "task.data.text_column") -> list[Example]:
    """Unlabelled texts: a CSV/TSV column (chosen by `setting`, which a missing column's error names) or one text
    per line, of a file or of stdin (`source="-"`; `auto`: lines)."""
    fmt = "lines" if str(source) == STDIN and fmt == "auto" else table_format(source_name(source), fmt)
    if fmt == "lines":
        rows = list(enumerate(read_lines(source, encoding_errors), 1))
    else:
        rows = [(n, values[0]) for n, values in read_table(source, [column], DELIMITERS[fmt],
                                                           encoding_errors, [setting])]
    source = source_name(source)
    skips, examples = Skips(str(source)), []
    for number, text in rows:
        if text.strip():
            examples.append(Example(one_line(text), None, f"{source}:{number}"))
        else:
            skips.add(f"{source}:{number}", "empty text")
    skips.report(len(examples))
    if not examples:
        raise UserError(f"{source}: no texts to label")
    return examples


def label_order(labels: Sequence[str]) -> list[str]:
    """The distinct labels, numerically if they are all integers (equal numbers, "01" and "1", by their text), else
    alphabetically."""
    distinct = set(labels)
    if all(label.removeprefix("-").isdecimal() for label in distinct):
        return sorted(distinct, key=lambda label: (int(label), label))
    return sorted(distinct)


def label_ids(examples: Sequence[Example], labels: Sequence[str]) -> list[int]:
    """Each example's label as an index into `labels`; an unseen label is a `UserError` naming its line."""
    index = {label: i for i, label in enumerate(labels)}
    ids = []
    for example in examples:
        if example.label not in index:
            raise UserError(f"{example.where}: label {example.label!r} was not seen in training "
                            f"(the model knows {list(labels)})")
        ids.append(index[example.label])
    return ids


class Batch(NamedTuple):
    """Token ids (B, T) padded with 0, their lengths (B,), labels (B,) (-1 when unlabelled), example indices (B,)."""

    ids: Tensor
    lengths: Tensor
    labels: Tensor
    index: Tensor


class EncodedTexts(Dataset):
    """Token id sequences with labels; `__getitems__` gives a padded `Batch`."""

    def __init__(self, examples: Sequence[Example], ids: Sequence[Sequence[int]], labels: Sequence[int] | None) -> None:
        self.examples = list(examples)
        self.ids = list(ids)
        self.labels = list(labels) if labels is not None else [-1] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.ids]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        ids, lengths = pad_ids([self.ids[i] for i in indices])
        labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        return Batch(ids, lengths, labels, torch.as_tensor(list(indices), dtype=torch.long))


class SentimentData(SplitDataModule):
    """Loaders over `EncodedTexts` built lazily by `load(stage)`, in batches of similar length.

    Training batches are shuffled within length pools; the other stages run in
    length order (predictions carry their example indices), prediction's in batches of `predict_batch_size`.
    """

    def __init__(
        self, load: Callable[[str], EncodedTexts], batch_size: int, num_workers: int = 0, seed: int = 0,
        predict_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, {"predict": predict_batch_size or batch_size}, load, _text_lengths,
                         seed)


def _text_lengths(texts: EncodedTexts) -> list[int]:
    return texts.lengths
