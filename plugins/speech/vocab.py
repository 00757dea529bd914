"""What the CTC head writes: characters of an alphabet, or tokens of a `tokenizers` tokenizer (words or subwords).

Both map text to ids with id 0 the CTC blank, say which characters or words they
cannot write, and group a token sequence into words (for word timings).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from gru_suite.errors import UserError
from gru_suite.text import (
    TOKENIZER_KINDS,
    encode_as_text,
    tokenizer_from_state,
    tokenizer_state,
    train_tokenizer,
)

BLANK = 0


def normalize_text(text: str) -> str:
    """Lower case, single spaces, no leading or trailing space."""
    return " ".join(text.lower().split())


class Vocabulary(Protocol):
    def __len__(self) -> int: ...
    def unknown(self, text: str) -> list[str]: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def decode_more(self, text: str, ids: Sequence[int], more: Sequence[int]) -> str: ...
    def word_ranges(self, ids: Sequence[int]) -> list[tuple[int, int]]: ...


class Alphabet:
    """Characters: `encode` maps text to ids 1..len(chars); words are split at the space."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars) or not chars:
            raise UserError(f"task.text.alphabet needs distinct characters, got {chars!r}")
        self.chars = chars
        self.ids = {c: i + 1 for i, c in enumerate(chars)}

    def __len__(self) -> int:
        """Output classes: the characters and the blank."""
        return len(self.chars) + 1

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` outside the alphabet, each once, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.ids))

    def encode(self, text: str) -> list[int]:
        return [self.ids[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != BLANK)

    def decode_more(self, text: str, ids: Sequence[int], more: Sequence[int]) -> str:
        """The text of `ids` + `more`, given `text`, that of `ids`: characters add their own."""
        return text + self.decode(more)

    def word_ranges(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """`(first, end)` index ranges of the words in `ids`, the spaces left out."""
        space = self.ids.get(" ")
        ranges, start = [], None
        for i, token in enumerate([*ids, space]):
            if token == space and start is not None:
                ranges.append((start, i))
                start = None
            elif token != space and start is None:
                start = i
        return ranges


class Tokens:
    """Words or subwords of a `PreTrainedTokenizerFast` (gru_suite.text); its pad id 0 is the CTC blank."""

    def __init__(self, tokenizer: Any, kind: str) -> None:
        self.tokenizer = tokenizer
        self.kind = kind

    @classmethod
    def train(cls, texts: Iterable[str], kind: str, vocab_size: int) -> Tokens:
        """A `kind` tokenizer (`TOKENIZER_KINDS`) of at most `vocab_size` tokens trained on transcripts `texts`."""
        if kind not in TOKENIZER_KINDS:
            raise UserError(f"task.text.tokens must be chars or one of {list(TOKENIZER_KINDS)}, got {kind!r}")
        # `word`: a transcript's word is one token, apostrophe and all ("don't" decodes as written, not "don ' t")
        tokenizer = train_tokenizer(texts, kind, vocab_size, min_frequency=1,  # type: ignore[arg-type]
                                    split_punctuation=False)
        return cls(tokenizer, kind)

    def state(self) -> dict[str, str]:
        return {"kind": self.kind, **tokenizer_state(self.tokenizer)}

    @classmethod
    def from_state(cls, state: dict[str, str]) -> Tokens:
        return cls(tokenizer_from_state(state), state["kind"])

    def __len__(self) -> int:
        return len(self.tokenizer)

    def unknown(self, text: str) -> list[str]:
        """The words of `text` the tokenizer can only write as `<unk>`."""
        unk = self.tokenizer.unk_token_id
        return [w for w in dict.fromkeys(text.split()) if unk in self.encode(w)]

    def encode(self, text: str) -> list[int]:
        return encode_as_text(self.tokenizer, [text])["input_ids"][0]  # "<s>" is text

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != BLANK], skip_special_tokens=True).strip()

    def decode_more(self, text: str, ids: Sequence[int], more: Sequence[int]) -> str:
        """The text of `ids` + `more` (`text`, that of `ids`, is not reused: tokens may merge across the join)."""
        return self.decode([*ids, *more])

    def word_ranges(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """One word per token (`word`), or a word from each token starting with "▁" (subwords)."""
        if self.kind == "word":
            return [(i, i + 1) for i in range(len(ids))]
        pieces = self.tokenizer.convert_ids_to_tokens(list(ids))
        starts = [i for i, piece in enumerate(pieces) if i == 0 or piece.startswith("▁")]
        return list(zip(starts, [*starts[1:], len(ids)]))
