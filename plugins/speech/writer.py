"""Transcript artifacts: one JSONL for all files, and per file plain text, SRT and WebVTT subtitles."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gru_suite.atomic import NAME_MAX, cut_to_bytes, write_jsonl, write_text
from gru_suite.errors import SKIPS_NAMED
from gru_suite_plugins.speech.sources import Skipped

log = logging.getLogger(__name__)


def cues(words: Sequence[dict[str, Any]], max_gap_s: float, max_words: int, min_s: float = 0.0,
         audio_end: float = math.inf) -> list[tuple[float, float, str]]:
    """Words grouped into subtitle phrases `(start, end, text)`: a phrase ends at a pause longer
    than `max_gap_s` or after `max_words` words, and stays on screen at least `min_s` seconds
    (as long as the next phrase has not started and the audio lasts: until `audio_end`, on the words'
    clock; the words' own times are unchanged)."""
    phrases: list[list[dict[str, Any]]] = []
    for word in words:
        if phrases and len(phrases[-1]) < max_words and word["start"] - phrases[-1][-1]["end"] <= max_gap_s:
            phrases[-1].append(word)
        else:
            phrases.append([word])
    starts = [p[0]["start"] for p in phrases]
    ends = [max(p[-1]["end"], min(start + min_s, next_start))
            for p, start, next_start in zip(phrases, starts, [*starts[1:], audio_end])]
    return [(start, end, " ".join(w["word"] for w in p)) for p, start, end in zip(phrases, starts, ends)]


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(phrases: Sequence[tuple[float, float, str]]) -> str:
    blocks = [f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n" for i, (a, b, text) in enumerate(phrases, 1)]
    return "\n".join(blocks)


def to_vtt(phrases: Sequence[tuple[float, float, str]]) -> str:
    # cue text is markup in WebVTT: &, < and > are written as entities
    blocks = [f"{_clock(a, '.')} --> {_clock(b, '.')}\n{html.escape(text, quote=False)}\n" for a, b, text in phrases]
    return "WEBVTT\n\n" + "\n".join(blocks)


STEM_BYTES = NAME_MAX - len("_999.srt")
"""The longest stem of an input's transcript files: room for a copy's number and the suffix in a file name."""


def _stems(paths: Sequence[str]) -> list[str]:
    """A distinct file stem per input: its own (cut to `STEM_BYTES`) for the first input of each name, else the
    first of `name_2`, `name_3`, ... that no other input has or is given."""
    own = [cut_to_bytes(Path(path).stem, STEM_BYTES) for path in paths]
    taken, first = set(own), {stem: i for i, stem in reversed(list(enumerate(own)))}
    stems: list[str] = []
    for i, stem in enumerate(own):
        candidate, copy = stem, 1
        while first[stem] != i and candidate in taken:
            copy += 1
            candidate = f"{stem}_{copy}"
        taken.add(candidate)
        stems.append(candidate)
    return stems


def skipped_line(skipped: Skipped) -> dict[str, Any]:
    """The transcripts.jsonl line of an input skipped: an empty transcript, its `duration` (null where the audio
    could not be read) and `skipped`, why."""
    offset = {"offset": round(skipped.offset, 3)} if skipped.offset is not None else {}
    duration = round(skipped.duration, 3) if skipped.duration is not None else None
    return {"path": str(skipped.path), **offset, "text": "", "duration": duration, "words": [],
            "skipped": skipped.reason}


def write_transcripts(transcripts: Sequence[dict[str, Any]], out_dir: Path, max_gap_s: float,
                      max_words: int, min_cue_s: float = 0.0) -> list[Path]:
    """`transcripts.jsonl` (one object per input) and `<stem>.txt`, `.srt`, `.vtt` per input.

    An input with an empty transcript gets a `warning` in its JSONL line, an empty `.txt` and `.srt` and a `.vtt`
    without cues (so no file of an earlier run stands in for it), and a logged warning (the first `SKIPS_NAMED` by
    name, then how many in all). An input skipped (`skipped_line`, warned of when read) gets the same empty files.
    """
    out_dir = Path(out_dir)
    if skipped := sum("skipped" in t for t in transcripts):
        log.warning("%d input(s) skipped (see the warnings above): marked in transcripts.jsonl", skipped)
    records, paths, empty = [], [], 0
    for stem, transcript in zip(_stems([t["path"] for t in transcripts]), transcripts):
        if not transcript["text"] and "skipped" not in transcript:
            transcript = {**transcript, "warning": "no speech recognised"}
            empty += 1
            if empty <= SKIPS_NAMED:
                log.warning("%s: no speech recognised; the transcript is empty", transcript["path"])
        audio_end = (transcript.get("offset") or 0) + (transcript.get("duration") or math.inf)  # a segment's end
        phrases = cues(transcript["words"], max_gap_s, max_words, min_cue_s, audio_end)
        paths.append(write_text(out_dir / f"{stem}.txt", transcript["text"] + "\n" if transcript["text"] else ""))
        paths.append(write_text(out_dir / f"{stem}.srt", to_srt(phrases)))
        paths.append(write_text(out_dir / f"{stem}.vtt", to_vtt(phrases)))
        records.append(transcript)
    if empty > SKIPS_NAMED:
        log.warning("no speech recognised in %d of %d inputs (marked in transcripts.jsonl)", empty, len(transcripts))
    return [write_jsonl(out_dir / "transcripts.jsonl", records), *paths]
