"""A deterministic bundled corpus: templated film reviews with sentiment words, intensifiers, negation,
contrast ("A, but B": B decides) and a rarer neutral class of plain facts."""

from __future__ import annotations

import random

import pandas as pd

SUBJECTS = ("the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending", "the cast",
            "the script", "the director's new film", "the sequel", "the dialogue", "the story")
VERBS = ("is", "was", "felt", "seemed")
INTENSIFIERS = ("", "", "very", "really", "truly", "quite", "incredibly", "remarkably")
POSITIVE = ("great", "wonderful", "moving", "brilliant", "charming", "funny", "delightful", "gripping",
            "beautiful", "clever", "heartfelt", "superb")
NEGATIVE = ("dull", "boring", "awful", "clumsy", "tedious", "bland", "painful", "forgettable",
            "messy", "lifeless", "predictable", "terrible")
FACTS = ("runs for {n} minutes", "was shot in {city}", "opens in {n} theaters", "is set in {city}",
         "was released in {year}", "is based on a novel", "is in black and white", "premiered in {city}")
CITIES = ("paris", "rome", "lisbon", "tokyo", "boston", "cairo", "oslo", "lima")
SPLITS = {"train": 3000, "val": 400, "test": 400}
NEUTRAL_SHARE = 0.2


def _clause(rng: random.Random, polarity: str) -> str:
    """`subject verb [intensifier] adjective` of `polarity`; 30% of the time by negating the opposite word
    ("is not dull" is positive)."""
    negate = rng.random() < 0.3
    words = NEGATIVE if (polarity == "positive") == negate else POSITIVE
    adverb = rng.choice(INTENSIFIERS)
    adjective = " ".join(filter(None, ["not" if negate else "", adverb, rng.choice(words)]))
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {adjective}"


def _fact(rng: random.Random) -> str:
    fact = rng.choice(FACTS).format(n=rng.randint(2, 180), city=rng.choice(CITIES), year=rng.randint(1950, 2024))
    return f"{rng.choice(SUBJECTS)} {fact}"


def review(rng: random.Random) -> tuple[str, str]:
    """One (text, label): a fact (neutral), a polar clause, or "A, but B" where B's polarity wins."""
    if rng.random() < NEUTRAL_SHARE:
        return _fact(rng) + " .", "neutral"
    label = rng.choice(("positive", "negative"))
    if rng.random() < 0.35:
        other = "negative" if label == "positive" else "positive"
        return f"{_clause(rng, other)} , but {_clause(rng, label)} .", label
    return _clause(rng, label) + " .", label


def corpus_files(seed: int = 0) -> dict[str, pd.DataFrame]:
    """`train.csv`, `val.csv`, `test.csv` with columns `text,label` (string labels)."""
    rng = random.Random(seed)
    return {f"{split}.csv": pd.DataFrame([review(rng) for _ in range(size)], columns=["text", "label"])
            for split, size in SPLITS.items()}
