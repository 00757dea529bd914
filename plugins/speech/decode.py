"""CTC decoding of per-frame log-probabilities (T, V): greedy, prefix beam search, and word timings.

torchaudio's lexicon-free `ctc_decoder` needs flashlight-text (not installed), so the
prefix beam search (Hannun et al. 2014, without a language model) is written out here;
word timings come from `torchaudio.functional.forced_align` of the decoded tokens.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from itertools import pairwise

import torch
import torchaudio
from torch import Tensor
from torchaudio.functional import TokenSpan

from gru_suite_plugins.speech.audio import SILENCE_PEAK
from gru_suite_plugins.speech.vocab import BLANK, Vocabulary


def blank_frames(frames: int, classes: int) -> Tensor:
    """Log-probabilities (frames, classes) of output frames that are certainly blank (audio before speech)."""
    rows = torch.full((frames, classes), -math.inf)
    rows[:, BLANK] = 0.0
    return rows


def mean_emissions(members: Sequence[Tensor]) -> Tensor:
    """One utterance's log-probabilities (T, V) from several models' (T_i, V) of one vocabulary and frame rate:
    the log of their mean per-frame probabilities, shorter ones padded with blank frames at the end (one model's
    are returned as they are)."""
    if len(members) == 1:
        return members[0]
    frames = max(len(lp) for lp in members)
    padded = [torch.cat([lp, blank_frames(frames - len(lp), lp.size(-1))]) for lp in members]
    return torch.logsumexp(torch.stack(padded), 0) - math.log(len(members))


def greedy(log_probs: Tensor, after: int = BLANK) -> list[int]:
    """Best token per frame, repeats merged, blanks dropped. `after`: the best token of the frame before these (one
    that continues in the first frames is not new)."""
    best = log_probs.argmax(-1)
    tokens = torch.unique_consecutive(torch.cat([best.new_tensor([after]), best]))[1:]
    return tokens[tokens != BLANK].tolist()


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def prefix_beam_search(log_probs: Tensor, beam_size: int) -> list[int]:
    """The most probable label sequence found keeping `beam_size` prefixes per frame.

    Each prefix carries the log-probability of its paths ending in blank and in its
    last token, so paths that collapse to the same labels are summed.
    """
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for frame in log_probs.tolist():
        candidates = sorted(range(len(frame)), key=frame.__getitem__, reverse=True)[:beam_size + 1]
        grown: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (p_blank, p_token) in beams.items():
            total = _logsumexp(p_blank, p_token)
            for c in candidates:
                p = frame[c]
                if c == BLANK:
                    grown[prefix][0] = _logsumexp(grown[prefix][0], total + p)
                elif prefix and prefix[-1] == c:
                    grown[prefix][1] = _logsumexp(grown[prefix][1], p_token + p)  # the token held
                    grown[prefix + (c,)][1] = _logsumexp(grown[prefix + (c,)][1], p_blank + p)  # repeated after a blank
                else:
                    grown[prefix + (c,)][1] = _logsumexp(grown[prefix + (c,)][1], total + p)
        ranked = sorted(grown.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)[:beam_size]
        beams = {prefix: (pb, pt) for prefix, (pb, pt) in ranked}
    return list(max(beams.items(), key=lambda kv: _logsumexp(*kv[1]))[0])


def decode(log_probs: Tensor, beam_size: int = 1) -> list[int]:
    """Greedy for `beam_size` 1, prefix beam search above."""
    return greedy(log_probs) if beam_size <= 1 else prefix_beam_search(log_probs, beam_size)


@dataclass(frozen=True)
class Word:
    """A recognised word, its start and end in seconds, and its mean per-frame probability."""

    word: str
    start: float
    end: float
    confidence: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


SOUND_MARGIN_DB = 6.0
"""A frame holds sound when its energy is this far above that of the utterance's quietest tenth of frames (or half
as far above it as the loudest frame, where that is nearer: a recording that is speech throughout)."""
SILENT_DB = 20 * math.log10(SILENCE_PEAK) - 10
"""Frames quieter than this (dB of full scale; -90) are silent and left out of that tenth: digital silence. It is the
level of noise whose peaks stay under `SILENCE_PEAK`, a silent file's (noise peaks about 10 dB above its level)."""
PAUSE_FRAMES = 3
"""Quiet output frames in a row that end a word's sound (shorter pauses, a stop consonant's, are bridged)."""
GAP_FRAMES = 10
"""Output frames in a row, certainly blank, that part an utterance into stretches decoded and aligned one by one."""
BLANK_CERTAIN = 0.999
"""The probability of blank from which a frame is certainly blank."""


def sounding_frames(samples: Tensor, hop: int, frames: int) -> Tensor:
    """Whether each of `frames` output frames (`hop` samples each, from the start of `samples`) holds sound:
    energy `SOUND_MARGIN_DB` above the quietest tenth of those above `SILENT_DB` (digital silence, and the
    silence past the audio's end, is quiet and does not lower that tenth), or half way from that tenth to the
    loudest frame where that is less (a recording that is speech from start to end has no quiet tenth to stand
    above: its louder half sounds)."""
    x = samples.detach().float().reshape(-1)[: frames * hop].cpu()
    x = torch.nn.functional.pad(x, (0, frames * hop - len(x)))
    level = 10 * torch.log10(x.reshape(frames, hop).pow(2).mean(1) + 1e-12)
    heard = level > SILENT_DB
    if not heard.any():
        return heard
    quiet = torch.quantile(level[heard], 0.1)
    return heard & (level >= quiet + min(SOUND_MARGIN_DB, float(level[heard].max() - quiet) / 2))


def _through_sound(start: int, limit: int, sound: Tensor) -> int:
    """The frame after the sound that goes on from `start` (pauses shorter than `PAUSE_FRAMES` bridged), before
    `limit`; `start` itself when none does."""
    end, quiet = start, 0
    for frame in range(start, limit):
        quiet = 0 if sound[frame] else quiet + 1
        if quiet >= PAUSE_FRAMES:
            break
        if not quiet:
            end = frame + 1
    return end


def speech_stretches(log_probs: Tensor) -> list[tuple[int, int]]:
    """(first, end) frames of the stretches that cover `log_probs` (T, V), cut after every run of at least
    `GAP_FRAMES` frames that are blank with probability `BLANK_CERTAIN` or more (the run ends its stretch)."""
    certain = (log_probs[:, BLANK] >= math.log(BLANK_CERTAIN)).tolist()
    cuts, run = [0], 0
    for frame, blank in enumerate(certain):
        if not blank and run >= GAP_FRAMES and frame > cuts[-1]:
            cuts.append(frame)
        run = run + 1 if blank else 0
    return list(pairwise([*cuts, len(certain)]))


def token_spans(log_probs: Tensor, tokens: list[int]) -> list[TokenSpan]:
    """The frames of each of `tokens` in the CTC forced alignment of `tokens` to `log_probs` (T, V), with the
    mean probability of its frames (memory: T x 2 len(tokens) bytes)."""
    if not tokens or len(log_probs) == 0:
        return []
    targets = torch.tensor([tokens], dtype=torch.int32)
    path, scores = torchaudio.functional.forced_align(log_probs[None].float().cpu(), targets, blank=BLANK)
    return torchaudio.functional.merge_tokens(path[0], scores[0].exp(), blank=BLANK)


def align_words(log_probs: Tensor, tokens: list[int], vocab: Vocabulary, frame_s: float, duration: float,
                sound: Tensor | None = None) -> list[Word]:
    """Words of `tokens` timed by the CTC forced alignment of `tokens` to `log_probs` (T, V) (`timed_words`)."""
    return timed_words(token_spans(log_probs, tokens), vocab, frame_s, duration, sound)


def decode_stretches(log_probs: Tensor, beam_size: int = 1) -> list[tuple[int, int, list[int]]]:
    """(first frame, end frame, tokens `decode`d) of each stretch of `log_probs` (T, V) between pauses
    (`speech_stretches`)."""
    return [(first, end, decode(log_probs[first:end], beam_size)) for first, end in speech_stretches(log_probs)]


def recognize(log_probs: Tensor, beam_size: int = 1) -> list[int]:
    """The tokens of an utterance's `log_probs` (T, V), decoded stretch by stretch as `recognize_words` times them
    (greedy: the same as decoding the whole, so it does; a beam search sees one stretch at a time)."""
    if beam_size <= 1:
        return greedy(log_probs)
    return [token for _, _, tokens in decode_stretches(log_probs, beam_size) for token in tokens]


def recognize_words(log_probs: Tensor, beam_size: int, vocab: Vocabulary, frame_s: float, duration: float,
                    sound: Tensor | None = None) -> list[Word]:
    """The timed words (`timed_words`) of an utterance's `log_probs` (T, V), decoded and aligned stretch by
    stretch (`decode_stretches`), so that an hour of audio needs the memory of its longest stretch between
    pauses, not of the whole (forced alignment's grows with frames x tokens)."""
    spans: list[TokenSpan] = []
    for first, end, tokens in decode_stretches(log_probs, beam_size):
        spans += [replace(s, start=s.start + first, end=s.end + first)
                  for s in token_spans(log_probs[first:end], tokens)]
    return timed_words(spans, vocab, frame_s, duration, sound)


def timed_words(spans: list[TokenSpan], vocab: Vocabulary, frame_s: float, duration: float,
                sound: Tensor | None = None) -> list[Word]:
    """The words of aligned tokens (`token_spans`), each from its first token's first frame to its last token's
    last frame, clipped to `duration`; its confidence is the mean probability of those tokens' frames. With
    `sound` (`sounding_frames`), a word goes on while the sound after its tokens does, up to the next word: CTC
    emits a token as a spike of a frame or two, so a word of one token would otherwise end 1-2 frames in.
    """
    found = []
    for first, end in vocab.word_ranges([s.token for s in spans]):
        pieces = spans[first:end]
        if text := vocab.decode([s.token for s in pieces]):
            confidence = sum(s.score * (s.end - s.start) for s in pieces) / sum(s.end - s.start for s in pieces)
            found.append((text, pieces[0].start, pieces[-1].end, confidence))
    words = []
    for i, (text, first, last, confidence) in enumerate(found):
        if sound is not None:
            last = _through_sound(last, min(found[i + 1][1] if i + 1 < len(found) else len(sound), len(sound)), sound)
        start, stop = min(first * frame_s, duration), min(last * frame_s, duration)
        words.append(Word(text, round(start, 3), round(stop, 3), round(float(confidence), 4)))
    return words
