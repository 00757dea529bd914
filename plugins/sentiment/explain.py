"""Why a prediction: token importance gathered into words, shown as highlighted HTML or terminal text."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

HIGHLIGHT = "255, 170, 0"
"""RGB of a word that weighed toward the label; its opacity is the word's weight relative to the text's heaviest
word (by size)."""
BARE_WORD = re.compile(r"\w+(?:['\u2019.\-]\w+)*")
"""Letters and digits, joined by apostrophes, points or hyphens ("it's", "well-made", "3.5"): a chunk's longest such
run is the word it names ("wonderful" in "<b>wonderful</b>", "movie" in "movie,")."""
AGAINST = "70, 130, 255"
"""RGB of a word that weighed against the label (a negative weight: gradient x input can be)."""
NOT_IN_HTML = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff]")
"""Characters an HTML page may not hold, even as references (control characters other than whitespace, and
noncharacters): a page shows U+FFFD in their place."""
TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
"""Control characters a terminal acts on (escape sequences, a new line, a bell): terminal text shows them escaped."""


def html_text(text: str) -> str:
    """`text` escaped for an HTML page (`NOT_IN_HTML` replaced by U+FFFD)."""
    return html.escape(NOT_IN_HTML.sub("\ufffd", text))


def terminal_text(text: str) -> str:
    """`text` with `TERMINAL_CONTROLS` shown as Python escapes (`\\x1b`, `\\n`), which a terminal prints rather
    than acts on: a text's escape sequence may not recolour the terminal or retitle its window."""
    return TERMINAL_CONTROLS.sub(lambda control: repr(control.group())[1:-1], text)


@dataclass(frozen=True)
class Word:
    """A word of the original text (`text[start:end]`) and the importance of its tokens, summed."""

    start: int
    end: int
    weight: float


def word_weights(text: str, offsets: Sequence[tuple[int, int]], word_ids: Sequence[int | None],
                 weights: Tensor) -> list[Word]:
    """Sum the token `weights` of each word of `text`, spanning its tokens' character `offsets` less the spaces a
    subword tokenizer counts as the word's first characters. A word is a chunk of the text between spaces: the
    tokenizer's words (`word_ids`) that touch are one ("it's", which the word tokenizer splits as it ' s)."""
    spans: dict[int, list[float]] = {}
    for (start, end), word, weight in zip(offsets, word_ids, weights.tolist()):
        if word is None:
            continue
        span = spans.setdefault(word, [start, end, 0.0])
        span[0], span[1], span[2] = min(span[0], start), max(span[1], end), span[2] + weight
    words = []
    for start, end, weight in (spans[k] for k in sorted(spans)):
        surface = text[int(start):int(end)]
        start += len(surface) - len(surface.lstrip())
        end -= len(surface) - len(surface.rstrip())
        word = Word(int(start), int(max(start, end)), weight)
        if words and words[-1].end == word.start:
            word = Word(words[-1].start, word.end, words.pop().weight + word.weight)
        words.append(word)
    return words


def heaviest_words(text: str, words: Sequence[Word], k: int) -> list[Word]:
    """The `k` heaviest distinct words that support the label (weight above 0), heaviest first, each its chunk's
    `BARE_WORD` (the words are the text's space-separated chunks: "great,", "<b>great</b>"); punctuation alone is
    left out and a repeated word counts once, at its heaviest."""
    chosen: dict[str, Word] = {}
    for word in sorted(words, key=lambda w: -w.weight):
        if len(chosen) == k or word.weight <= 0:
            break
        if runs := list(BARE_WORD.finditer(text, word.start, word.end)):
            bare = max(runs, key=lambda run: run.end() - run.start())  # the first of the longest
            chosen.setdefault(bare.group().lower(), Word(bare.start(), bare.end(), word.weight))
    return list(chosen.values())


def top_words(text: str, words: Sequence[Word], k: int) -> list[str]:
    """The surfaces of `heaviest_words`."""
    return [text[w.start:w.end] for w in heaviest_words(text, words, k)]


def highlight_html(text: str, words: Sequence[Word]) -> str:
    """`text`, escaped (`html_text`), with each word in a span shaded by its weight, orange toward the label and
    blue against it (title: the weight)."""
    heaviest = max((abs(w.weight) for w in words), default=0.0) or 1.0
    parts, cursor = [], 0
    for word in sorted(words, key=lambda w: w.start):
        if word.start < cursor:
            continue
        parts.append(html_text(text[cursor:word.start]))
        colour, alpha = HIGHLIGHT if word.weight >= 0 else AGAINST, abs(word.weight) / heaviest
        parts.append(f'<span style="background: rgba({colour}, {alpha:.2f})" title="{word.weight:.3f}">'
                     f"{html_text(text[word.start:word.end])}</span>")
        cursor = word.end
    parts.append(html_text(text[cursor:]))
    return "".join(parts)


def highlight_terminal(text: str, words: Sequence[Word], k: int) -> str:
    """`text` with its `k` heaviest words (`heaviest_words`, as the CSV's `top_words`) in [brackets], as
    `terminal_text`."""
    parts, cursor = [], 0
    for word in sorted(heaviest_words(text, words, k), key=lambda w: w.start):
        parts += [text[cursor:word.start], f"[{text[word.start:word.end]}]"]
        cursor = word.end
    return terminal_text("".join(parts) + text[cursor:])


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.4em; text-align: left; vertical-align: top; }}
td.text {{ line-height: 1.6; }}
</style></head>
<body><h1>{title}</h1>
<p>Each word is shaded by how much it weighed toward the predicted label (orange) or against it (blue);
hover for the value.</p>
<table><tr><th>line</th><th>label</th><th>probability</th><th class="text">text</th></tr>
{rows}
</table></body></html>
"""


def html_page(title: str, rows: Sequence[tuple[str, str, float, str]]) -> str:
    """A page of `(where, label, probability, highlighted text HTML)` rows; `where` and `label` are escaped here
    (`html_text`)."""
    body = "\n".join(
        f"<tr><td>{html_text(where)}</td><td>{html_text(label)}</td><td>{prob:.3f}</td>"
        f'<td class="text">{text}</td></tr>'
        for where, label, prob, text in rows
    )
    return PAGE.format(title=html_text(title), rows=body)
