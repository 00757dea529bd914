"""Characters <-> CTC token ids: id 0 is the CTC blank, the alphabet's characters follow in order."""

from __future__ import annotations

from collections.abc import Sequence

BLANK = 0


def normalize_text(text: str) -> str:
    """Lower case, single spaces, no leading or trailing space."""
    return " ".join(text.lower().split())


class Alphabet:
    """The characters a model can write; `encode` maps text to ids 1..len(chars)."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError(f"an alphabet needs distinct characters, got {chars!r}")
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
