"""Text tooling shared by the text tasks: reading corpora, subword tokenizers, padding token ids.

Tokenizers are trained locally with `tokenizers` and wrapped as
`transformers.PreTrainedTokenizerFast`, so they `save_pretrained`/`from_pretrained`
the standard way; `tokenizer_state`/`tokenizer_from_state` carry them inside a
checkpoint as plain data.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import logging
import sys
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from gru_suite.errors import UserError, not_a_file

if TYPE_CHECKING:  # transformers is imported where a tokenizer is made: a cold import costs seconds
    from transformers import BatchEncoding, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

TokenizerKind = Literal["bpe", "unigram", "word"]
TOKENIZER_KINDS: tuple[str, ...] = get_args(TokenizerKind)
REPLACED_LINES_NAMED = 5
"""Lines with bytes replaced by U+FFFD named one by one in the log; the rest are counted."""
SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
"""Special tokens of every suite tokenizer, given to its trainer in this order, so they take the first ids."""
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))

EncodingErrorRule = Literal["error", "replace"]
ENCODING_ERRORS: tuple[str, ...] = get_args(EncodingErrorRule)
"""The values of a task's `data.encoding_errors`."""
EncodingErrors = EncodingErrorRule | None
"""What a line that is not UTF-8 does: error, replace, or None (an error, for a task without the setting)."""


STDIN = "-"
"""The path that names standard input (`read_lines`, `read_table`); errors call it `<stdin>`."""


def source_name(path: str | Path) -> str:
    """How errors and warnings name `path`: `<stdin>` for `STDIN`."""
    return "<stdin>" if str(path) == STDIN else str(path)


def read_lines(path: str | Path, encoding_errors: EncodingErrors = None) -> list[str]:
    """The lines of a plain or gzip (`.gz`) UTF-8 text file, or of stdin (`STDIN`, gzip data unpacked), without
    line ends.

    A line that is not valid UTF-8 raises a `UserError` naming the file and line
    (`encoding_errors="error"`, whose message offers the task's `encoding_errors=replace`,
    or None, for a task without that setting), or is decoded with U+FFFD in place of the
    bad bytes and reported in a warning (`"replace"`).
    """
    if str(path) == STDIN:
        data = sys.stdin.buffer.read()
        if data.startswith(GZIP_MAGIC):  # `cat text.gz | ...`: read as the file would be
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as err:
                raise UserError(f"{source_name(path)}: gzip-compressed, but cannot be unpacked ({err})") from err
        return decode_lines(split_lines(data), source_name(path), encoding_errors)
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path)
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: a .gz whose compressed data is damaged
        raise UserError(f"{path}: cannot read ({err})") from err
    if opener is open and data.startswith(GZIP_MAGIC):
        raise UserError(f"{path}: gzip-compressed, but not named .gz: rename it {path.name}.gz, or unpack it")
    return decode_lines(split_lines(data), str(path), encoding_errors)


GZIP_MAGIC = b"\x1f\x8b"
"""The first two bytes of a gzip file."""


def split_lines(data: bytes) -> list[bytes]:
    """The lines of `data` without their ends: "\\n" or "\\r\\n" ends a line, and a lone "\\r" inside one is part of it
    (bytes.splitlines would cut there, and shift every later line of a file aligned with another); a file with
    no "\\n" but a "\\r" has old Mac line ends, "\\r" (its last line, too, may lack one)."""
    lines = data.split(b"\r") if b"\n" not in data and b"\r" in data else data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def decode_lines(raw_lines: Iterable[bytes], source: str, encoding_errors: EncodingErrors = None) -> list[str]:
    """UTF-8 `raw_lines` (from a file or stdin named `source`) as text, with `read_lines`'s error rule."""
    if encoding_errors not in ("error", "replace", None):
        raise UserError(f"task.data.encoding_errors must be 'error' or 'replace', got {encoding_errors!r}")
    lines, replaced = [], 0
    for number, raw in enumerate(raw_lines, start=1):
        try:  # utf-8-sig: a byte-order mark is not text (the file's, or one inside it from files put together)
            lines.append(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            byte = err.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
            where = f"{source}:{number}: not UTF-8 ({err.reason} at byte {byte})"
            if encoding_errors != "replace":
                fix = "fix the file or set task.data.encoding_errors=replace" if encoding_errors else "save it as UTF-8"
                raise UserError(f"{where}; {fix}") from err
            replaced += 1
            if replaced <= REPLACED_LINES_NAMED:
                log.warning("%s; bad bytes replaced with U+FFFD", where)
            lines.append(raw.decode("utf-8-sig", errors="replace"))
    if replaced > REPLACED_LINES_NAMED:
        log.warning("%s: %d lines in all had bytes replaced with U+FFFD", source, replaced)
    return lines


def read_table(
    path: str | Path,
    columns: Sequence[str],
    delimiter: str | None = None,
    encoding_errors: EncodingErrors = None,
    settings: Sequence[str] = (),
) -> list[tuple[int, list[str]]]:
    """The `columns` of a CSV/TSV file with a header row, as `(line number, values)` per data row (a blank line is
    a row of empty values).

    The delimiter is a tab for `.tsv`/`.tsv.gz` (no quoting, as in GLUE) and a comma
    otherwise (standard CSV quoting; a quoted field may span lines). A missing column
    raises a `UserError` listing the columns that exist (and naming the setting that chose it, where
    `settings` gives one per column); a row with more or fewer fields than the header, or a quote left
    open, one naming the row's first line.
    """
    path = Path(path)
    tab = delimiter == "\t" or (delimiter is None and ".tsv" in [suffix.lower() for suffix in path.suffixes])
    return parse_table(read_lines(path, encoding_errors), columns, source_name(path), "\t" if tab else delimiter or ",",
                       settings)


def parse_table(
    lines: Sequence[str], columns: Sequence[str], path: str, delimiter: str = ",", settings: Sequence[str] = ()
) -> list[tuple[int, list[str]]]:
    """`read_table` of text `lines` already read (from `path`, e.g. `<stdin>`, which errors name)."""
    tab = delimiter == "\t"
    lines = [line + "\n" for line in lines]
    quoting = csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=not tab)
    start = 1
    limit = csv.field_size_limit(max(csv.field_size_limit(), sum(map(len, lines))))  # a text of any length
    try:
        header = next(reader, None)
        if not header:
            raise UserError(f"{path}:1: expected a header row naming the columns, found an empty line")
        while len(header) > 1 and not header[-1].strip():
            header.pop()
        header = [name.strip() for name in header]
        chosen_by = dict(zip(columns, settings))
        if missing := [name for name in columns if name not in header]:
            named = ", ".join(f"{name!r}" + (f" ({chosen_by[name]})" if name in chosen_by else "") for name in missing)
            raise UserError(f"{path}:1: no column {named}; the columns are {header}")
        if twice := sorted({name for name in columns if header.count(name) > 1}):
            raise UserError(f"{path}:1: the header names column(s) {', '.join(map(repr, twice))} more than once, so "
                            f"which one to read is unclear; the columns are {header}")
        where = [header.index(name) for name in columns]
        rows = []
        start = reader.line_num + 1
        for row in reader:
            while len(row) > len(header) and not row[-1]:  # trailing empty fields (a trailing delimiter)
                row.pop()
            if not row:  # a blank line: a row of empty fields, for the task's rule on empty ones to name
                rows.append((start, [""] * len(columns)))
            elif len(row) != len(header):
                hint = "; quote a text that holds a comma" if len(row) > len(header) and not tab else ""
                raise UserError(f"{path}:{start}: {len(row)} field(s), expected {len(header)} ({header}){hint}")
            else:
                rows.append((start, [row[i] for i in where]))
            start = reader.line_num + 1
    except csv.Error as err:
        raise UserError(f"{path}:{start}: not valid CSV ({err})") from err
    finally:
        csv.field_size_limit(limit)
    return rows


def train_tokenizer(
    texts: Iterable[str],
    kind: TokenizerKind = "bpe",
    vocab_size: int = 8000,
    lowercase: bool = False,
    min_frequency: int = 2,
    split_punctuation: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on `texts` and return it as a `PreTrainedTokenizerFast`.

    `bpe` and `unigram` split into subwords over a Metaspace pre-tokenizer, so
    `decode(encode(text))` gives back the (NFKC-normalised, each whitespace character a space) text; `word` keeps
    whole words seen `min_frequency` times (bpe: merges seen that often; unigram ignores it), split at
    whitespace and punctuation ("don't": three tokens, decoded "don ' t"), or with `split_punctuation=False` at
    whitespace alone, which decodes exactly (transcripts).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    unk = SPECIAL_TOKENS["unk_token"]
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=unk))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
        )
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token=unk, show_progress=False
        )
    elif kind == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token=unk))
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
        )
    else:
        raise UserError(f"tokenizer kind must be bpe, unigram or word, not {kind!r}")
    # every whitespace character (a tab, U+2028) reads as a space: the subword kinds' Metaspace splits at spaces alone
    steps = [normalizers.NFKC(), normalizers.Replace(Regex(r"[^\S ]"), " ")]
    steps += [normalizers.Lowercase()] if lowercase else []
    tokenizer.normalizer = normalizers.Sequence(steps)
    if kind == "word" and split_punctuation:
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    elif kind == "word":
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
    try:
        tokenizer.train_from_iterator(texts, trainer=trainer)
    except Exception as err:  # tokenizers raises a bare Exception, e.g. a unigram vocabulary smaller than the alphabet
        raise UserError(f"cannot train the {kind} tokenizer with vocab_size={vocab_size} on these texts: "
                        f"{err}") from err
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def encode_as_text(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], **kwargs: object) -> BatchEncoding:
    """`tokenizer(texts, **kwargs)` (a `BatchEncoding`) without sentence marks, reading a special token's string
    in a text as text: a unigram model holds the special tokens as pieces and may still match one there, which
    then becomes the unknown token."""
    encoding = tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True, **kwargs)
    marks = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    unk = tokenizer.unk_token_id
    encoding["input_ids"] = [[unk if i in marks else i for i in ids] for ids in encoding["input_ids"]]
    return encoding


def readable_pieces(pieces: Sequence[str]) -> list[str]:
    """Subword pieces for display, one label per piece: a word's first piece without its "▁" mark, a piece
    that continues a word prefixed with "##" (`["▁sekv", "at."]` -> `["sekv", "##at."]`); a bare "▁" (a word
    start whose first characters are a piece of their own) stays, and the piece after it starts the word.
    Padding and sentence marks stay as they are; pieces of a `word` tokenizer, which carry no mark, too."""
    if not any(piece.startswith("\u2581") for piece in pieces):
        return list(pieces)
    marks = {SPECIAL_TOKENS[key] for key in ("pad_token", "bos_token", "eos_token")}
    shown, word_start = [], True
    for piece in pieces:
        if piece in marks or piece == "\u2581":
            shown.append(piece)
        elif piece.startswith("\u2581"):
            shown.append(piece[1:])
        else:
            shown.append(piece if word_start else f"##{piece}")
        word_start = piece == "\u2581" or piece in marks
    return shown


def token_labels(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int]) -> list[str]:
    """The pieces of token `ids` as `readable_pieces` shows them, one label per id."""
    return readable_pieces(tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


def tokenizer_state(tokenizer: PreTrainedTokenizerFast) -> dict[str, str]:
    """A tokenizer as plain data for a checkpoint (its `tokenizer.json` text)."""
    return {"tokenizer_json": tokenizer.backend_tokenizer.to_str()}


def tokenizer_from_state(state: dict[str, str]) -> PreTrainedTokenizerFast:
    """Rebuild a `PreTrainedTokenizerFast` saved with `tokenizer_state`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(state["tokenizer_json"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Right-pad token id lists into a `(batch, longest)` tensor; also return the lengths."""
    rows = [torch.as_tensor(ids, dtype=torch.long) for ids in sequences]
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    return pad_sequence(rows, batch_first=True, padding_value=pad_id), lengths
