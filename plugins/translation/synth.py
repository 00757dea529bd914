"""A deterministic bundled parallel corpus: English sentences from a small grammar and their
translation into "Toy", a made-up language with its own words, verb-final order, adjectives after
the noun, and gender/number agreement of articles, adjectives and verbs."""

from __future__ import annotations

import numpy as np

SOURCE, TARGET = "en", "toy"
SPLITS = {"train": 4000, "val": 300, "test": 300}

# English noun -> (Toy noun, gender)
NOUNS = {
    "dog": ("hundo", "m"), "cat": ("miza", "f"), "bird": ("pivo", "m"), "horse": ("kavala", "f"),
    "child": ("bambo", "m"), "woman": ("dona", "f"), "man": ("omo", "m"), "teacher": ("magistra", "f"),
    "farmer": ("kampo", "m"), "girl": ("puela", "f"), "boy": ("puero", "m"), "friend": ("amika", "f"),
    "apple": ("pomo", "m"), "book": ("libra", "f"), "ball": ("bolo", "m"), "house": ("kasa", "f"),
    "tree": ("arbo", "m"), "river": ("fluva", "f"), "garden": ("horto", "m"), "city": ("urba", "f"),
}
ANIMATE = ("dog", "cat", "bird", "horse", "child", "woman", "man", "teacher", "farmer", "girl", "boy", "friend")
PLURALS = {"child": "children", "woman": "women", "man": "men", "city": "cities"}
ADJECTIVES = {
    "big": "grand", "small": "pik", "red": "rub", "old": "vet", "young": "jun", "happy": "fel",
    "green": "vird", "quiet": "kal", "fast": "rap", "good": "bon",
}
# English verb (base form) -> Toy stem; singular subjects take -at, plural -ant
VERBS = {
    "see": "vid", "like": "am", "find": "trov", "carry": "port", "follow": "sekv", "watch": "gard",
    "help": "hjelp", "know": "kon", "want": "vol", "draw": "pikt",
}
PREPOSITIONS = {"near": "apud", "in": "ena", "behind": "post", "with": "kun"}
ARTICLES = {  # (English article, plural?) -> Toy article by gender
    ("the", False): {"m": "lo", "f": "la"}, ("the", True): {"m": "los", "f": "las"},
    ("a", False): {"m": "un", "f": "una"}, ("a", True): {"m": "kelk", "f": "kelka"},
}


def _english_noun(noun: str, plural: bool) -> str:
    return (PLURALS.get(noun, noun + "s")) if plural else noun


def _english_verb(verb: str, plural_subject: bool) -> str:
    if plural_subject:
        return verb
    return verb[:-1] + "ies" if verb.endswith("ry") else verb + ("es" if verb.endswith(("ch", "sh")) else "s")


def _phrase(rng: np.random.Generator, nouns: tuple[str, ...]) -> tuple[list[str], list[str], bool]:
    """A noun phrase in English and Toy, and whether it is plural."""
    noun = str(rng.choice(nouns))
    plural = bool(rng.random() < 0.4)
    article = str(rng.choice(["the", "a"]))
    toy_noun, gender = NOUNS[noun]
    adjectives = [str(a) for a in rng.choice(list(ADJECTIVES), size=int(rng.choice([0, 0, 1, 1, 2])), replace=False)]
    english = [("some" if plural and article == "a" else article), *adjectives, _english_noun(noun, plural)]
    suffix = ("a" if gender == "f" else "o") + ("s" if plural else "")
    toy = [ARTICLES[(article, plural)][gender], toy_noun + ("s" if plural else ""),
           *(ADJECTIVES[a] + suffix for a in adjectives)]
    return english, toy, plural


def sentence_pair(rng: np.random.Generator) -> tuple[str, str]:
    """One English sentence (subject verb object [preposition phrase]) and its Toy translation
    (subject [preposition phrase] object verb)."""
    subject, toy_subject, plural = _phrase(rng, ANIMATE)
    obj, toy_obj, _ = _phrase(rng, tuple(NOUNS))
    verb = str(rng.choice(list(VERBS)))
    english = [*subject, _english_verb(verb, plural), *obj]
    toy = [*toy_subject]
    if rng.random() < 0.35:
        preposition = str(rng.choice(list(PREPOSITIONS)))
        place, toy_place, _ = _phrase(rng, tuple(NOUNS))
        english += [preposition, *place]
        toy += [PREPOSITIONS[preposition], *toy_place]
    toy += [*toy_obj, VERBS[verb] + ("ant" if plural else "at")]
    english[0] = english[0].capitalize()
    toy[0] = toy[0].capitalize()
    return " ".join(english) + ".", " ".join(toy) + "."


def corpus_files(seed: int = 6) -> dict[str, str]:
    """`{split}.en` and `{split}.toy` for train/val/test: aligned, one sentence per line, no
    sentence in two splits; the same text every run."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    files = {}
    for split, count in SPLITS.items():
        pairs: list[tuple[str, str]] = []
        while len(pairs) < count:
            english, toy = sentence_pair(rng)
            if english not in seen:
                seen.add(english)
                pairs.append((english, toy))
        files[f"{split}.{SOURCE}"] = "".join(e + "\n" for e, _ in pairs)
        files[f"{split}.{TARGET}"] = "".join(t + "\n" for _, t in pairs)
    return files
