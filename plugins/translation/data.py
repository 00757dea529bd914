"""Parallel corpora: reading aligned files or TSV pairs under documented bad-input rules, and batching them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch.utils.data import Dataset

from gru_suite.data import SplitDataModule
from gru_suite.config import check_choice
from gru_suite.errors import UserError, first_named
from gru_suite.text import encode_as_text, pad_ids, read_lines, read_table, source_name

log = logging.getLogger(__name__)

TooLong = Literal["truncate", "skip", "error"]


@dataclass
class Corpus:
    """Aligned sentences and the 1-based line each came from (`target` is empty for source-only text)."""

    where: str
    source: list[str]
    target: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    files: tuple[str, str] | None = None
    """The source and target files where they are two (aligned text files); None: `where` holds both sides."""

    def side_file(self, side: str) -> str:
        """Where the `side` ("source" or "target") sentences were read, for a message that names one's line."""
        return self.where if self.files is None else self.files[side == "target"]


def warn_lines(where: str, lines: Sequence[int], what: str) -> None:
    """One warning naming the first few lines of `where` with the problem `what`, and how many there are (a line
    of several sentences once)."""
    lines = list(dict.fromkeys(lines))
    if lines:
        log.warning("%s: %s on line(s) %s", where, what, first_named(lines))


def _existing(folder: Path, name: str) -> Path | None:
    """`name` or `name.gz` in `folder`, whichever is there; both are an error (which would be read?)."""
    found = [path for path in (folder / name, folder / f"{name}.gz") if path.is_file()]
    if len(found) > 1:
        raise UserError(f"{folder}: both {name} and {name}.gz: keep the one to read")
    return found[0] if found else None


def read_parallel(folder: str | Path, split: str, source: str, target: str, encoding_errors: str,
                  keep_empty: bool = False) -> Corpus | None:
    """The split's pairs from `<split>.<source>` + `<split>.<target>` (each optionally `.gz`) or from
    `<split>.tsv[.gz]` whose header names the languages; None if the split has no files.

    Files of different lengths are a `UserError` naming both; pairs with an empty side
    are dropped with a warning naming their lines (kept with `keep_empty`, as a text to translate keeps
    every line).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: a file, not the translation data folder (task.data.path names the folder that "
                        "holds the <split>.<language> files)")
    if not folder.is_dir():
        raise UserError(f"translation data folder not found: {folder}")
    src_path, tgt_path = _existing(folder, f"{split}.{source}"), _existing(folder, f"{split}.{target}")
    if src_path and tgt_path and (tsv := _existing(folder, f"{split}.tsv")):
        raise UserError(f"{folder}: both {src_path.name} + {tgt_path.name} and {tsv.name} hold the {split} split: "
                        "keep one layout")
    if src_path and tgt_path:
        src, tgt = read_lines(src_path, encoding_errors), read_lines(tgt_path, encoding_errors)
        if len(src) != len(tgt):
            raise UserError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                            "the files must be aligned line by line")
        corpus = Corpus(f"{src_path} + {tgt_path.name}", src, tgt, list(range(1, len(src) + 1)),
                        (str(src_path), str(tgt_path)))
    elif tsv := _existing(folder, f"{split}.tsv"):
        rows = read_table(tsv, [source, target], delimiter="\t", encoding_errors=encoding_errors,
                          settings=("task.data.source", "task.data.target"))
        corpus = Corpus(str(tsv), [r[0] for _, r in rows], [r[1] for _, r in rows], [n for n, _ in rows])
    elif src_path or tgt_path:
        found = src_path or tgt_path
        missing = f"{split}.{target if found == src_path else source}"
        what = "a folder, not a file" if (folder / missing).is_dir() else "missing"
        raise UserError(f"{found} has no aligned {missing}[.gz] beside it in {folder} ({folder / missing}: {what})")
    else:
        return None
    return corpus if keep_empty else _without_empty(corpus)


def _without_empty(corpus: Corpus) -> Corpus:
    """`corpus` without its pairs with an empty side, named in a warning; none left is an error."""
    empty = {i for i, (s, t) in enumerate(zip(corpus.source, corpus.target)) if not (s.strip() and t.strip())}
    if len(empty) == len(corpus.source):
        raise UserError(f"{corpus.where}: " + (f"no pair with both sides non-empty (of {len(empty)})" if empty
                                               else "no sentence pairs (empty)"))
    warn_lines(corpus.where, [corpus.lines[i] for i in sorted(empty)], "empty sentence, pair skipped")
    keep = [i for i in range(len(corpus.source)) if i not in empty]
    return replace(corpus, source=[corpus.source[i] for i in keep], target=[corpus.target[i] for i in keep],
                   lines=[corpus.lines[i] for i in keep])


def read_source_text(path: str, encoding_errors: str) -> Corpus:
    """Sentences to translate, one per line, from a file (optionally `.gz`) or `-` (stdin); every line kept."""
    lines = read_lines(path, encoding_errors)  # type: ignore[arg-type]
    return Corpus(source_name(path), lines, [], list(range(1, len(lines) + 1)))


def too_long_rule(value: Any) -> TooLong:
    """`task.data.too_long`, which must be one of `TooLong`."""
    return check_choice(value, get_args(TooLong), "task.data.too_long")


class Encoder:
    """Turns sentences into token ids under the length and unknown-character rules.

    Ids end with EOS; over `max_tokens` (EOS included) a sentence is truncated, skipped
    or an error (`too_long`); sentences with characters the tokenizer cannot
    represent keep them as `<unk>`, with a warning naming the lines.
    """

    def __init__(self, tokenizer: Any, max_tokens: int, too_long: TooLong) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.too_long = too_long_rule(too_long)

    def __call__(self, sentences: Sequence[str], lines: Sequence[int], where: str, side: str) -> list[list[int] | None]:
        """Ids per sentence; None for one skipped as too long."""
        unk, eos = self.tokenizer.unk_token_id, self.tokenizer.eos_token_id
        # a literal "</s>" in the text is text, not the end of the sentence
        encoded = encode_as_text(self.tokenizer, sentences)["input_ids"] if sentences else []
        out: list[list[int] | None] = []
        long, unknown = [], []
        for ids, line in zip(encoded, lines):
            if unk in ids:
                unknown.append(line)
            if len(ids) + 1 > self.max_tokens:
                long.append(line)
                if self.too_long == "error":
                    raise UserError(f"{where}:{line}: {side} sentence has {len(ids) + 1} tokens, more than "
                                    f"task.data.max_tokens={self.max_tokens} (or set task.data.too_long=truncate|skip)")
                if self.too_long == "skip":
                    out.append(None)
                    continue
                ids = ids[: self.max_tokens - 1]
            out.append([*ids, eos])
        warn_lines(where, unknown, f"{side} words or characters unknown to the tokenizer, kept as <unk>")
        action = "truncated" if self.too_long == "truncate" else "skipped"
        warn_lines(where, long, f"{side} sentence over task.data.max_tokens={self.max_tokens} tokens, {action}")
        return out


class PairSet(Dataset):
    """Encoded sentences (with targets for training and scoring) batched by `__getitems__` as a dict:

    `source` (B, S) ids with `source_lengths`; with targets also `target_in` (BOS + ids),
    `target_out` (ids + EOS), `target_lengths` and `references` (the raw target text);
    always `index` (position in the set).
    """

    def __init__(self, source: list[list[int]], target: list[list[int]] | None, references: list[str] | None,
                 bos: int) -> None:
        self.source = source
        self.target = target
        self.references = references
        self.bos = bos

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        source, source_lengths = pad_ids([self.source[i] for i in indices])
        batch: dict[str, Any] = {"source": source, "source_lengths": source_lengths, "index": torch.tensor(indices)}
        if self.target is not None and self.references is not None:
            target_in, lengths = pad_ids([[self.bos, *self.target[i][:-1]] for i in indices])
            batch.update(target_in=target_in, target_out=pad_ids([self.target[i] for i in indices])[0],
                         target_lengths=lengths, references=[self.references[i] for i in indices])
        return batch


class TranslationData(SplitDataModule):
    """Train/val/test pair sets and the predict set, each built on first use by `build(stage)`.

    Batches hold sentences of similar length: shuffled length buckets for training,
    length order for the rest (predictions carry their `index`).
    """

    def __init__(self, build: Any, batch_size: int, eval_batch_size: int, num_workers: int = 0, seed: int = 0) -> None:
        eval_sizes = {"val": eval_batch_size, "test": eval_batch_size, "predict": eval_batch_size}
        super().__init__(batch_size, num_workers, eval_sizes, build=build, lengths=_source_lengths, seed=seed)


def _source_lengths(pairs: PairSet) -> list[int]:
    return [len(ids) for ids in pairs.source]
