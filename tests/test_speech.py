"""The speech task: audio and features, CTC decoding and timing, learning, streaming, artifacts, bad input."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gru_suite.backbone import GRUBackbone
from gru_suite.checkpoint import load_checkpoint
from gru_suite.errors import UserError
from gru_suite import run
from gru_suite.testing import check_task_plugin, compose_train_config
from gru_suite_plugins.speech.audio import FeatureConfig, LogMel, read_audio
from gru_suite_plugins.speech.data import AudioSet, Augment, Featurizer, mel_centres_hz, pad_frames
from gru_suite_plugins.speech.decode import (
    align_words,
    blank_frames,
    greedy,
    mean_emissions,
    GAP_FRAMES,
    prefix_beam_search,
    recognize,
    recognize_words,
    sounding_frames,
    speech_stretches,
    timed_words,
)
from gru_suite_plugins.speech.endpoint import Endpointer
from gru_suite_plugins.speech.model import Lookahead, SpeakerAdversary, Spectral, SpectralFrontend, SpeechModel
from gru_suite_plugins.speech.sources import (Skipped, Utterance, after_silence, connect, in_range, noise_floor,
                                              read_folder, read_fsdd, read_manifest, read_source, split_fsdd)
from gru_suite_plugins.speech.stream import StreamingRecognizer
from gru_suite_plugins.speech import task as speech_task
from gru_suite_plugins.speech.task import Scores, SpeechTask, partial_change
from gru_suite_plugins.speech.synth import speak
from gru_suite_plugins.speech.vocab import Alphabet, Tokens
from gru_suite_plugins.speech.writer import cues, to_srt, to_vtt, write_transcripts

from conftest import REPO, needs_gpu, run_cli

BUNDLED = REPO / "data" / "speech"
RATE = 8000
ALPHABET = Alphabet("abcdefghijklmnopqrstuvwxyz' ")
TINY = ["backbone.hidden_size=32", "task.model.frontend_size=32", "task.data.batch_size=8"]
NO_EVAL_SPLITS = ["task.data.val=null", "task.data.test=null"]  # a training split alone, not the bundled ones
SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)"


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows).log()


# audio and features


def test_stereo_44k_audio_is_downmixed_and_resampled(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = write_wav(tmp_path / "stereo.wav", np.stack([tone, np.zeros_like(tone)], axis=1), 44100)
    samples = read_audio(path, RATE)
    assert samples.shape == (8000,) and samples.dtype == torch.float32
    assert float(samples.abs().max()) == pytest.approx(0.25, abs=0.01)  # the mean of the two channels
    spectrum = np.abs(np.fft.rfft(samples.numpy()))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # one second at 8 kHz: bin = Hz
    antiphase = write_wav(tmp_path / "antiphase.wav", np.stack([tone, -tone], axis=1), 44100)
    with pytest.raises(UserError, match=r"antiphase\.wav: its channels cancel out in the mono downmix \(peak below"):
        read_audio(antiphase, RATE)  # a loud file, not called silent
    faint = write_wav(tmp_path / "faint.wav", np.stack([np.full(800, 1.5e-4), np.zeros(800)], axis=1), 8000)
    with pytest.raises(UserError, match=r"faint\.wav: the audio is silent"):
        read_audio(faint, RATE)  # one faint channel, nothing cancelled


def test_an_offset_and_duration_are_seconds_whatever_the_files_rate(tmp_path: Path) -> None:
    quiet_then_loud = np.r_[np.full(16000, 0.1), np.full(16000, 0.5)] * np.sign(np.sin(np.arange(32000) / 5))
    path = write_wav(tmp_path / "16k.wav", quiet_then_loud, 16000)  # two seconds at 16 kHz
    samples = read_audio(path, RATE, offset=1.25, duration=0.5)
    assert samples.shape == (4000,) and float(samples.abs().max()) > 0.4  # half a second of the loud one, at 8 kHz


def test_audio_at_a_rate_outside_any_speech_is_refused_not_resampled(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "slow.wav", 0.5 * np.sin(np.arange(4000) / 3), 1)  # 67 minutes at 1 Hz
    with pytest.raises(UserError, match=r"slow\.wav: its sample rate is 1 Hz; speech audio has 1000 to 768000 Hz"):
        read_audio(path, RATE)
    path = write_wav(tmp_path / "fast.wav", 0.5 * np.sin(np.arange(4000) / 3), 2_000_000)
    with pytest.raises(UserError, match=r"fast\.wav: its sample rate is 2000000 Hz; speech audio has 1000 to"):
        read_audio(path, RATE)


def test_a_rate_that_shares_no_large_factor_with_the_models_is_resampled_from_the_nearest_that_does(
        tmp_path: Path, caplog) -> None:
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(96001) / 96001)  # one second of A, recorded at 96001 Hz
    with caplog.at_level(logging.WARNING):  # exactly, a kernel of 3 GB
        samples = read_audio(write_wav(tmp_path / "odd.wav", tone, 96001), RATE)
    assert samples.shape == (RATE + 1,)  # 96001 samples read as 96000 Hz: 8000.08 at 8 kHz, rounded up
    spectrum = np.abs(np.fft.rfft(samples.numpy()))
    assert int(np.argmax(spectrum)) == 440  # still A, to the hertz
    assert "audio at 96001 Hz is resampled to 8000 Hz as if recorded at 96000 Hz (0.001% slower)" in caplog.text
    with pytest.raises(UserError, match=r"audio at 96001 Hz cannot be resampled to 8001 Hz in reasonable memory .*: "
                                        r"set task.features.sample_rate to a multiple of 100 Hz"):
        read_audio(tmp_path / "odd.wav", 8001)  # a model's odd rate: no nearby rate helps


def test_floating_point_audio_far_past_full_scale_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    sf.write(path, np.full(4000, 1e38, np.float32), RATE, subtype="FLOAT")  # finite, but its power overflows
    with pytest.raises(UserError, match=r"loud\.wav: the audio holds samples as large as 1e\+38, where floating-point "
                                        r"audio holds them in \[-1, 1\]"):
        read_audio(path, RATE)


def test_log_mel_frames_and_chunked_features_equal_the_whole() -> None:
    config = FeatureConfig(sample_rate=RATE, n_mels=40, win_ms=25, hop_ms=10)
    samples = torch.from_numpy(speak(["seven", "two"], seed=3))
    features = LogMel(config)(samples)
    assert features.shape == (config.frames(len(samples)), 40)
    assert config.frames(config.n_fft - 1) == 0 and config.frames(config.n_fft) == 1
    first = LogMel(config)(samples[: 30 * config.hop_length + config.n_fft])
    assert torch.allclose(first, features[:31], atol=1e-5)


def test_cepstra_are_torchaudios_mfccs_and_stream_like_the_whole() -> None:
    config = FeatureConfig(sample_rate=RATE, n_mels=40, win_ms=25, hop_ms=10, cepstra=13)
    samples = torch.from_numpy(speak(["seven", "two"], seed=3))
    mfcc = torchaudio.transforms.MFCC(RATE, n_mfcc=13, log_mels=True, melkwargs={
        "n_fft": config.n_fft, "win_length": config.win_length, "hop_length": config.hop_length, "n_mels": 40,
        "center": False})(samples).T
    featurizer = Featurizer(config, torch.zeros(13), torch.ones(13), online_prior=5)
    raw = featurizer.raw(samples)
    assert config.size == 13 and featurizer.model_features(raw).shape == (len(raw), 13)
    assert torch.allclose(featurizer.model_features(raw), mfcc, atol=1e-3)
    whole = featurizer.normalize(raw)
    first, carry = featurizer.normalize_chunk(raw[:17], None)
    assert torch.allclose(torch.cat([first, featurizer.normalize_chunk(raw[17:], carry)[0]]), whole, atol=1e-5)
    torch.manual_seed(0)
    model = SpeechModel(partial(GRUBackbone, hidden_size=8), config.size, len(ALPHABET), lookahead=2).eval()
    stream = StreamingRecognizer(model, featurizer, ALPHABET)
    with torch.no_grad():
        for i in range(0, len(samples), 333):
            stream.accept(samples[i:i + 333])
        stream.finish()
        assert torch.allclose(stream.emissions(), model(whole[None])[0][0], atol=1e-5)


# decoding and timing


def test_greedy_merges_repeats_and_keeps_letters_split_by_blank() -> None:
    # blank, a, b: "a a _ a b b" -> "aab"
    frames = [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]]
    assert greedy(probs(frames)) == [1, 1, 2]


def test_greedy_decodes_a_stream_piece_by_piece_as_a_whole() -> None:
    """A stream decodes only its newest output frames, after the best token of the frame before them."""
    frames = [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]]
    whole = probs(frames)
    for split in range(len(frames) + 1):
        before = int(whole[split - 1].argmax()) if split else 0
        assert greedy(whole[:split]) + greedy(whole[split:], after=before) == greedy(whole) == [1, 1, 2], split


def test_prefix_beam_search_sums_paths_that_greedy_misses() -> None:
    # per frame blank 0.6, a 0.4: greedy says "", but P("a") = 0.16 + 0.24 + 0.24 = 0.64 > P("") = 0.36
    frames = probs([[0.6, 0.4], [0.6, 0.4]])
    assert greedy(frames) == []
    assert prefix_beam_search(frames, beam_size=4) == [1]
    assert prefix_beam_search(frames, beam_size=1) == []  # a one-prefix beam keeps the likelier first frame


def test_an_unpruned_prefix_beam_finds_the_label_sequence_all_paths_make_likeliest() -> None:
    import itertools

    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        log_probs = torch.randn(5, 3, generator=generator).log_softmax(-1)  # blank and two tokens, 5 frames
        totals: dict[tuple[int, ...], float] = {}
        for path in itertools.product(range(3), repeat=5):  # every alignment, collapsed as CTC does
            labels = tuple(int(t) for t in torch.unique_consecutive(torch.tensor(path)) if t != 0)
            totals[labels] = totals.get(labels, 0.0) + math.exp(sum(log_probs[i, t].item() for i, t in enumerate(path)))
        assert prefix_beam_search(log_probs, beam_size=64) == list(max(totals, key=totals.get))


def test_beam_search_equals_greedy_on_confident_frames() -> None:
    frames = [[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]
    assert prefix_beam_search(probs(frames), beam_size=8) == greedy(probs(frames)) == [1, 1, 2]


def test_an_ensemble_averages_probabilities_and_pads_the_shorter_member_with_blanks() -> None:
    unsure = probs([[0.2, 0.45, 0.35], [0.9, 0.05, 0.05]])  # (blank, a, b): "a", narrowly
    sure = probs([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3]])  # "b", surely (one frame longer)
    mean = mean_emissions([unsure, sure])
    expected = torch.tensor([[0.15, 0.325, 0.525], [0.85, 0.075, 0.075], [0.7, 0.15, 0.15]])
    assert torch.allclose(mean.exp(), expected, atol=1e-6)
    assert greedy(unsure) == [1] and greedy(sure) == [2] and greedy(mean) == [2]
    assert torch.equal(mean_emissions([sure]), sure)


def test_word_times_follow_the_alignment_and_stay_inside_the_audio() -> None:
    alphabet = Alphabet("ab ")  # ids: a 1, b 2, space 3
    rows = {0: [0.97, 0.01, 0.01, 0.01], 1: [0.01, 0.97, 0.01, 0.01], 2: [0.01, 0.01, 0.97, 0.01],
            3: [0.01, 0.01, 0.01, 0.97]}
    path = [0, 1, 1, 2, 0, 3, 3, 0, 0, 2, 2, 0]  # _ a a b _ ␣ ␣ _ _ b b _  ->  "ab b"
    log_probs = probs([rows[i] for i in path])
    tokens = greedy(log_probs)
    words = align_words(log_probs, tokens, alphabet, frame_s=0.1, duration=1.15)
    assert [w.word for w in words] == ["ab", "b"]
    assert (words[0].start, words[0].end) == (0.1, 0.4)
    assert (words[1].start, words[1].end) == (0.9, 1.1)
    assert all(0.9 < w.confidence <= 1 for w in words)
    clipped = align_words(log_probs, tokens, alphabet, frame_s=0.1, duration=1.0)
    assert clipped[-1].end == 1.0


def test_long_audio_is_decoded_and_aligned_between_its_pauses() -> None:
    alphabet = Alphabet("ab ")
    rows = {0: [0.9997, 0.0001, 0.0001, 0.0001], 1: [0.01, 0.97, 0.01, 0.01], 2: [0.01, 0.01, 0.97, 0.01],
            3: [0.01, 0.01, 0.01, 0.97]}
    phrase = [1, 1, 0, 2, 3, 0, 0, 2, 2, 0, 1, 3] + [0] * 12  # "ab ba ", then a pause of 12 certain blanks
    split = [1, 2] + [0] * 12 + [2, 3, 1]  # "ab", a pause, "b a": the pause comes inside the word "abb"
    log_probs = probs([rows[i] for i in phrase * 3 + split])
    assert speech_stretches(log_probs) == [(0, 24), (24, 48), (48, 72), (72, 86), (86, 89)]
    exactly, one_short = ([1] + [0] * gap + [2] for gap in (GAP_FRAMES, GAP_FRAMES - 1))
    cut = GAP_FRAMES + 1  # after the run of GAP_FRAMES blanks
    assert speech_stretches(probs([rows[i] for i in exactly])) == [(0, cut), (cut, cut + 1)]
    assert speech_stretches(probs([rows[i] for i in one_short])) == [(0, GAP_FRAMES + 1)]
    whole = align_words(log_probs, greedy(log_probs), alphabet, frame_s=0.1, duration=8.9)
    pieces = recognize_words(log_probs, 1, alphabet, frame_s=0.1, duration=8.9)
    assert pieces == whole and " ".join(w.word for w in pieces) == "ab ba ab ba ab ba abb a"
    assert (pieces[-2].start, pieces[-2].end) == (7.2, 8.7)  # "abb" from before the pause to after it
    assert recognize(log_probs) == greedy(log_probs)  # the text the test metrics score is the transcript's
    assert recognize(log_probs, 3) == [t for a, b in speech_stretches(log_probs)
                                       for t in prefix_beam_search(log_probs[a:b], 3)]
    hour = probs(([rows[1]] * 2 + [rows[0]] * GAP_FRAMES + [rows[3]] + [rows[0]] * GAP_FRAMES) * 3000)
    words = recognize_words(hour, 4, alphabet, frame_s=0.03, duration=len(hour) * 0.03)  # 40 min, 3000 words
    assert len(words) == 3000 and words[-1].start == round((len(hour) - 2 * GAP_FRAMES - 3) * 0.03, 3)


def test_word_and_subword_tokens_group_into_words() -> None:
    texts = ["one two", "three one", "nine", "two nine"]
    words = Tokens.train(texts, "word", 100)
    ids = words.encode("two one nine")
    assert len(ids) == 3 and 0 not in ids
    assert words.decode(ids) == "two one nine" and words.word_ranges(ids) == [(0, 1), (1, 2), (2, 3)]
    assert words.unknown("one eleven one") == ["eleven"]
    assert Tokens.from_state(words.state()).encode("two one nine") == ids
    contractions = Tokens.train(["i don't know", "it's here"], "word", 100)  # a word is one token, as written
    ids = contractions.encode("it's i don't")
    assert len(ids) == 3 and contractions.decode(ids) == "it's i don't"
    bpe = Tokens.train(texts * 5, "bpe", 30)
    ids = bpe.encode("one two nine")
    assert [bpe.decode(ids[a:b]) for a, b in bpe.word_ranges(ids)] == ["one", "two", "nine"]


def test_more_tokens_decode_as_the_whole_sequence_would() -> None:
    """A stream's transcript grows by `decode_more`: characters add their own text, tokens are decoded anew."""
    words = Tokens.train(["one two", "three one", "nine"], "word", 100)
    for vocab, text in ((ALPHABET, "one two nine"), (words, "one two nine")):
        ids = vocab.encode(text)
        for split in range(len(ids) + 1):
            assert vocab.decode_more(vocab.decode(ids[:split]), ids[:split], ids[split:]) == vocab.decode(ids), split


def test_a_words_confidence_is_the_mean_probability_of_its_tokens_frames() -> None:
    span = torchaudio.functional.TokenSpan
    spans = [span(token=1, start=0, end=1, score=0.5), span(token=2, start=1, end=4, score=0.9)]
    (word,) = timed_words(spans, Alphabet("ab "), frame_s=0.1, duration=1.0)
    assert word.word == "ab" and word.confidence == pytest.approx((0.5 * 1 + 0.9 * 3) / 4)


def test_a_words_sound_bridges_pauses_shorter_than_pause_frames() -> None:
    span = torchaudio.functional.TokenSpan(token=1, start=1, end=2, score=0.9)  # "a" spikes at frame 1
    sound = torch.tensor([0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)  # pauses of 2, then 3 frames
    (word,) = timed_words([span], Alphabet("ab "), frame_s=0.1, duration=1.2, sound=sound)
    assert (word.start, word.end) == (0.1, 0.7)  # through the pause of 2, up to the pause of 3 (PAUSE_FRAMES)


def test_a_lookahead_starts_as_the_identity() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 4)
    torch.testing.assert_close(Lookahead(4, 3)(hidden), hidden)


def test_word_tokens_are_timed_one_word_per_token() -> None:
    words = Tokens.train(["one two"], "word", 100)
    one, two = words.encode("one two")
    path = [0, one, one, 0, 0, two, 0]
    log_probs = torch.full((len(path), len(words)), 0.01 / (len(words) - 1)).log()
    for t, token in enumerate(path):
        log_probs[t, token] = math.log(0.99)
    timed = align_words(log_probs, greedy(log_probs), words, frame_s=0.05, duration=0.35)
    assert [(w.word, w.start, w.end) for w in timed] == [("one", 0.05, 0.15), ("two", 0.25, 0.3)]


def test_a_word_of_one_spike_lasts_while_its_sound_does() -> None:
    words = Tokens.train(["one two"], "word", 100)
    one, two = words.encode("one two")
    path = [0, one, 0, 0, 0, 0, 0, 0, 0, two, 0, 0, 0, 0, 0, 0]  # CTC spikes: one frame per word
    log_probs = torch.full((len(path), len(words)), 0.01 / (len(words) - 1)).log()
    for t, token in enumerate(path):
        log_probs[t, token] = math.log(0.99)
    hop = 10
    loud = torch.zeros(len(path) * hop)
    for first, last in ((1, 4), (5, 7), (9, 13)):  # "one": frames 1-6 with a one-frame stop at 4; "two": 9-12
        loud[first * hop : last * hop] = torch.sin(torch.arange((last - first) * hop) * 0.7)
    sound = sounding_frames(loud + 1e-4 * torch.randn(len(loud), generator=torch.Generator().manual_seed(0)),
                            hop, len(path))
    timed = align_words(log_probs, greedy(log_probs), words, frame_s=0.05, duration=0.8, sound=sound)
    assert [(w.word, w.start, w.end) for w in timed] == [("one", 0.05, 0.35), ("two", 0.45, 0.65)]
    noisy = loud + 1e-4 * torch.randn(len(loud), generator=torch.Generator().manual_seed(0))
    noisy[14 * hop :] = 0  # digital silence: not the quiet level the noise is measured against
    assert torch.equal(sounding_frames(noisy, hop, len(path)), sound)
    assert not sounding_frames(torch.zeros(len(loud)), hop, len(path)).any()
    spiky = align_words(log_probs, greedy(log_probs), words, frame_s=0.05, duration=0.8)
    assert [(w.start, w.end) for w in spiky] == [(0.05, 0.1), (0.45, 0.5)]  # without the sound: one frame each


def test_a_recording_that_is_speech_throughout_sounds_in_its_louder_frames() -> None:
    hop, frames = 80, 12
    gain = 10 ** (torch.linspace(-30, -24, frames) / 20).repeat_interleave(hop)  # 6 dB from start to end: no pause
    speech = gain * torch.sin(torch.arange(frames * hop) * 0.3) * math.sqrt(2)
    sound = sounding_frames(speech, hop, frames)
    assert sound[-5:].all() and not sound[:5].any()  # no frame is 6 dB above the quietest tenth: its louder half



def test_steady_noise_around_a_word_as_loud_as_it_does_not_sound() -> None:
    hop, rate = 240, 8000  # 30 ms frames
    noisy = 0.01 * torch.randn(int(1.5 * rate), generator=torch.Generator().manual_seed(0))
    tone = 0.01 * math.sqrt(2) * torch.sin(2 * math.pi * 300 * torch.arange(int(0.3 * rate)) / rate)
    noisy[int(0.2 * rate):int(0.5 * rate)] += tone  # 0 dB SNR: frames 6.7-16.7 hold the word
    sound = sounding_frames(noisy, hop, len(noisy) // hop)
    assert sound[7:16].all() and not sound[:6].any() and not sound[17:].any()  # the noise alone stays quiet

# learning and streaming


@pytest.fixture(scope="module")
def overfit() -> tuple[SpeechModel, Featurizer, list, list[str]]:
    """A tiny unidirectional model trained until it transcribes four bundled utterances right."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fastest for a tiny model, and immune to oversubscription
    yield train_until_right()
    torch.set_num_threads(threads)


def train_until_right() -> tuple[SpeechModel, Featurizer, list, list[str]]:
    torch.manual_seed(0)
    utterances = [u for u in read_manifest(BUNDLED / "train.jsonl", RATE) if u.text in ("two", "six", "nine")][:3]
    utterances.append(next(u for u in read_manifest(BUNDLED / "train.jsonl", RATE) if len(u.text.split()) == 2))
    config = FeatureConfig()
    raw = [LogMel(config)(u.samples) for u in utterances]
    frames = torch.cat(raw)
    featurizer = Featurizer(config, frames.mean(0), frames.std(0))
    features, lengths = pad_frames([featurizer.normalize(r) for r in raw])
    texts = [u.text for u in utterances]
    targets = torch.tensor([i for t in texts for i in ALPHABET.encode(t)])
    target_lengths = torch.tensor([len(t) for t in texts])
    model = SpeechModel(partial(GRUBackbone, hidden_size=64), config.n_mels, len(ALPHABET), subsample=2,
                        frontend_size=64, dropout=0.0, lookahead=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(400):
        log_probs, out_lengths, _ = model(features, lengths)
        loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 20 == 19:
            with torch.no_grad():
                hyps = [ALPHABET.decode(greedy(lp[:n])) for lp, n in zip(model(features, lengths)[0], out_lengths)]
            if hyps == texts:
                break
    return model.eval(), featurizer, utterances, texts


def test_model_overfits_a_few_utterances_and_transcribes_them(overfit) -> None:
    model, featurizer, utterances, texts = overfit
    with torch.no_grad():
        for u, text in zip(utterances, texts):
            log_probs = model(featurizer(u.samples)[None])[0][0]
            tokens = greedy(log_probs)
            assert ALPHABET.decode(tokens) == text
            words = align_words(log_probs, tokens, ALPHABET, 0.02, u.seconds)
            assert [w.word for w in words] == text.split()
            times = [t for w in words for t in (w.start, w.end)]
            assert times == sorted(times) and 0 <= times[0] and times[-1] <= u.seconds
            assert all(w.start < w.end for w in words)


@pytest.mark.parametrize("chunk", [37, 800, 100_000])
def test_streaming_equals_offline(overfit, chunk: int) -> None:
    model, featurizer, utterances, texts = overfit
    with torch.no_grad():
        for u, text in zip(utterances, texts):
            offline = model(featurizer(u.samples)[None])[0][0]
            stream = StreamingRecognizer(model, featurizer, ALPHABET)
            partials = [stream.accept(u.samples[i:i + chunk]) for i in range(0, len(u.samples), chunk)]
            partials.append(stream.finish())
            assert torch.allclose(stream.emissions(), offline, atol=1e-4)
            assert partials[-1] == stream.text() == ALPHABET.decode(greedy(offline)) == text
            assert all(text.startswith(p.rstrip()) or len(partials) == 1 for p in partials[:-1])


def test_the_speaker_adversary_scores_known_speakers_frames_and_reverses_the_encoders_gradient() -> None:
    torch.manual_seed(0)
    adversary = SpeakerAdversary(4, 3, scale=0.5)
    hidden = torch.randn(3, 5, 4, requires_grad=True)
    lengths, speakers = torch.tensor([5, 2, 4]), torch.tensor([0, 2, -1])  # the third speaker unknown
    loss, accuracy = adversary(hidden, lengths, speakers)
    loss.backward()
    direct = hidden.detach().requires_grad_()  # the same frames without the reversal
    logits = torch.cat([adversary.classifier(direct[0]), adversary.classifier(direct[1, :2])])
    labels = torch.tensor([0] * 5 + [2] * 2)
    expected = F.cross_entropy(logits, labels)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item())
    assert accuracy.item() == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert torch.allclose(hidden.grad, -0.5 * direct.grad) and hidden.grad[2].abs().sum() == 0
    nobody, _ = adversary(hidden, lengths, torch.full((3,), -1))
    assert nobody.item() == 0


def _speakers_manifest(folder: Path, split: str, count: int) -> Path:
    folder.mkdir(exist_ok=True)
    lines = []
    for i in range(count):
        word = ("two", "six", "nine")[i % 3]
        write_wav(folder / f"{split}_{i}.wav", speak([word], seed=100 * len(split) + i))
        lines.append(json.dumps({"audio_filepath": f"{split}_{i}.wav", "text": word, "speaker": "ab"[i % 2]}))
    (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder / f"{split}.jsonl"


def test_without_a_test_split_testing_uses_the_validation_split(tmp_path: Path) -> None:
    data = [f"task.data.{split}={_speakers_manifest(tmp_path / 'data', split, n)}"
            for split, n in (("train", 8), ("val", 4))]
    quiet = [*TINY, *data, "trainer.max_epochs=1", "threads=1"]
    metrics = run.train(compose_train_config("speech", [*quiet, "task.data.test=null"], tmp_path / "run"))
    assert 0 <= metrics["test/cer"] and (tmp_path / "run" / "predictions" / "transcripts.jsonl").is_file()
    with pytest.raises(UserError, match=r"^task.data.val is not set: give the val split \(a manifest or a folder of "
                                        r"audio\), or task.data.fsdd$"):
        run.train(compose_train_config("speech", [*quiet, "task.data.val=null", "task.data.test=null"],
                                       tmp_path / "no_val"))
    with pytest.raises(UserError, match=r"^task.data.val is not set"):  # not the working folder read as audio
        run.train(compose_train_config("speech", [*quiet, "task.data.val=''", "task.data.test=null"],
                                       tmp_path / "empty_val"))


def test_speaker_adversarial_training_logs_the_adversary_and_restores_it(tmp_path: Path) -> None:
    data = [f"task.data.{split}={_speakers_manifest(tmp_path / 'data', split, n)}"
            for split, n in (("train", 12), ("val", 4), ("test", 4))]
    cfg = compose_train_config("speech", [*TINY, *data, "task.model.speaker_adversary=1.0", "trainer.max_epochs=2",
                                          "predict_after_training=false"], tmp_path / "run")
    metrics = run.train(cfg)
    assert 0 < metrics["train/speaker_loss"] and 0 <= metrics["train/speaker_accuracy"] <= 1
    assert metrics["train/loss"] == pytest.approx(metrics["train/ctc_loss"] + metrics["train/speaker_loss"], rel=1e-4)
    module = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert module.task.state["speakers"] == ["a", "b"] and module.model.adversary is not None
    off = module.task.cfg.copy()
    off.model.speaker_adversary = 0.0  # its weights still load; it no longer trains
    task = SpeechTask(off, module.task.state)
    rebuilt = task.build_model(instantiate(module.config.backbone, _partial_=True))
    rebuilt.load_state_dict(module.model.state_dict())
    batch = next(iter(task.datamodule().train_dataloader()))
    assert set(task.step(rebuilt, batch, "train").metrics) == set()
    on = module.task.cfg.copy()  # speaker-adversarial training cannot start from a model trained without it
    state = {key: value for key, value in module.task.state.items() if key != "speakers"}
    with pytest.raises(UserError, match="speaker_adversary needs a model trained with it from the start"):
        SpeechTask(on, state).build_model(partial(GRUBackbone, hidden_size=32))
    without = compose_train_config("speech", [*TINY, "task.model.speaker_adversary=1.0"], tmp_path / "bundled")
    with pytest.raises(UserError, match=r"speaker_adversary needs training utterances of at least two speakers, "
                                        r"found none"):
        run.build_task(without.task).datamodule()


@needs_gpu
def test_streaming_a_model_on_the_gpu_equals_its_offline_pass(overfit, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full fp32 both ways, as on the CPU
    model, featurizer, utterances, texts = overfit
    gpu = copy.deepcopy(model).cuda()
    with torch.no_grad():
        for u, text in zip(utterances, texts):
            offline = gpu(featurizer(u.samples)[None].cuda())[0][0].cpu()
            stream = StreamingRecognizer(gpu, featurizer, ALPHABET)
            for start in range(0, len(u.samples), 800):
                stream.accept(u.samples[start:start + 800])
            assert stream.finish() == text
            assert torch.allclose(stream.emissions(), offline, atol=1e-4)


def room_tone_before(samples: torch.Tensor, seconds: float, level: float = 0.001) -> torch.Tensor:
    noise = np.random.default_rng(0).normal(0.0, level, int(seconds * RATE)).astype(np.float32)
    return torch.cat([torch.from_numpy(noise), samples])


def test_endpointer_skips_the_quiet_start_up_to_a_preroll_before_the_onset() -> None:
    config = FeatureConfig()
    log_mel, endpointer = LogMel(config), Endpointer(config, preroll=10, multiple=3)
    word = log_mel(torch.from_numpy(speak(["six"], seed=2)))
    word_onset = endpointer.onset(word)[0]
    assert word_onset is not None and endpointer.skipped(word_onset) == 0  # speech from the start: nothing skipped
    raw = log_mel(room_tone_before(torch.from_numpy(speak(["six"], seed=2)), 1.0))
    onset = endpointer.onset(raw)[0]
    assert 97 <= onset <= 100 + word_onset  # after 1 s of 10 ms frames (3 of them reach into the word)
    trimmed, skipped = endpointer.trim(raw)
    assert skipped == (onset - 10) // 3 * 3 and torch.equal(trimmed, raw[skipped:])
    carried, found = math.inf, None  # frame by frame, carrying the quietest energy, the same onset
    for t in range(len(raw)):
        hit, carried = endpointer.onset(raw[t:t + 1], carried)
        if hit is not None:
            found = t
            break
    assert found == onset
    quiet = log_mel(room_tone_before(torch.zeros(0), 1.0))
    assert endpointer.onset(quiet)[0] is None and endpointer.trim(quiet)[1] == 0  # no speech: all kept
    loud = log_mel(room_tone_before(torch.zeros(0), 0.5, level=0.1))  # -20 dBFS noise: above level_dbfs
    assert endpointer.onset(loud)[0] == 0


@pytest.mark.parametrize("chunk", [37, 800, 100_000])
def test_streaming_equals_offline_after_a_skipped_quiet_start(overfit, chunk: int) -> None:
    model, featurizer, utterances, _ = overfit
    featurizer.endpointer = Endpointer(featurizer.config, multiple=model.subsample)
    try:
        with torch.no_grad():
            for u in utterances:
                samples = room_tone_before(u.samples, 0.8)
                speech, skipped = featurizer.speech(samples)
                assert skipped >= 60
                offline = torch.cat([blank_frames(skipped // model.subsample, len(ALPHABET)),
                                     model(featurizer.normalize(speech)[None])[0][0]])
                stream = StreamingRecognizer(model, featurizer, ALPHABET)
                for i in range(0, len(samples), chunk):
                    stream.accept(samples[i:i + chunk])
                assert stream.finish() == ALPHABET.decode(greedy(offline))
                assert torch.allclose(stream.emissions(), offline, atol=1e-4)
                assert len(offline) == featurizer.config.frames(len(samples)) // model.subsample
                words = align_words(offline, greedy(offline), ALPHABET, 0.02, len(samples) / RATE)
                assert words and words[0].start >= skipped * 0.01  # times count from the start of the audio
    finally:
        featurizer.endpointer = None


@pytest.mark.parametrize("lookahead, spectral", [(0, None), (3, None), (3, Spectral(channels=4, kernel=5, pool=3))])
def test_lookahead_waits_for_future_frames_and_sees_zeros_past_the_end(lookahead: int,
                                                                       spectral: Spectral | None) -> None:
    torch.manual_seed(0)
    config = FeatureConfig()
    model = SpeechModel(partial(GRUBackbone, hidden_size=16), config.n_mels, len(ALPHABET), subsample=3,
                        lookahead=lookahead, spectral=spectral).eval()
    featurizer = Featurizer(config, torch.zeros(config.n_mels), torch.ones(config.n_mels))
    samples = [torch.randn(4000) * 0.1, torch.randn(2500) * 0.1]
    with torch.no_grad():
        if lookahead:
            model.lookahead.conv.weight.normal_()
        alone = [model(featurizer(s)[None])[0][0] for s in samples]
        features, lengths = pad_frames([featurizer(s) for s in samples])
        batched, out_lengths, _ = model(features, lengths)
        for one, row, n in zip(alone, batched, out_lengths):
            assert torch.allclose(row[:n], one, atol=1e-5)  # padding frames never leak into the lookahead
        stream = StreamingRecognizer(model, featurizer, ALPHABET)
        for i in range(0, len(samples[0]), 333):
            stream.accept(samples[0][i:i + 333])
        assert len(stream.emissions()) == len(alone[0]) - lookahead
        stream.finish()
        assert torch.allclose(stream.emissions(), alone[0], atol=1e-5)


@pytest.mark.parametrize("kernel, pool", [(5, 3), (1, 4), (4, 3), (5, 40), (1, 3), (3, 7), (6, 9)])
def test_spectral_front_end_hears_every_mel_bin_or_refuses_the_settings(kernel: int, pool: int) -> None:
    torch.manual_seed(0)
    settings = Spectral(channels=8, kernel=kernel, pool=pool)
    frames = torch.randn(8, 40, 64 * 3, requires_grad=True)  # channels first: (B, mel bins, T)
    if settings.problem(40):  # max-pooling would drop positions that alone reach the top bins
        with pytest.raises(ValueError, match="unheard"):
            SpectralFrontend(40, 16, 3, settings)
        return
    out = SpectralFrontend(40, 16, 3, settings)(frames)
    assert out.shape == (8, 16, 64)
    out.sum().backward()
    assert (frames.grad.abs().sum(dim=(0, 2)) > 0).all()


def test_spectral_settings_default_where_unset(tmp_path: Path) -> None:
    for unset in ("task.model.spectral=null", "task.model.spectral.pool=null"):
        cfg = compose_train_config("speech", ["task.model.frontend=spectral", unset], tmp_path / "run")
        assert run.build_task(cfg.task).spectral == Spectral()


@pytest.mark.parametrize(("setting", "message"), [
    ("task.data.connected.words=[3,2]",
     "task.data.connected.words must be [low, high], ints with 1 <= low <= high, got [3, 2]"),
    ("task.data.connected.pause_s=0.2",
     "task.data.connected.pause_s must be [low, high], floats with 0 <= low <= high, got 0.2"),
    ("task.data.fsdd_split.test_takes=5",
     "task.data.fsdd_split.test_takes must be [low, high], ints with 0 <= low <= high (or null), got 5"),
])
def test_range_settings_are_one_line_when_the_task_is_built(setting: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        run.build_task(compose_train_config("speech", [setting], tmp_path).task)


def test_a_config_from_before_the_colour_option_builds(tmp_path: Path) -> None:
    cfg = compose_train_config("speech", ["~task.augment.colour_db", "~task.augment.colour_points"], tmp_path / "run")
    assert run.build_task(cfg.task).colour_points == 6  # the default


def test_streaming_refuses_bidirectional_or_per_utterance_models() -> None:
    config = FeatureConfig()
    bi = SpeechModel(partial(GRUBackbone, hidden_size=8, bidirectional=True), config.n_mels, len(ALPHABET))
    uni = SpeechModel(partial(GRUBackbone, hidden_size=8), config.n_mels, len(ALPHABET))
    with pytest.raises(UserError, match="unidirectional"):
        StreamingRecognizer(bi, Featurizer(config, torch.zeros(40), torch.ones(40)), ALPHABET)
    with pytest.raises(UserError, match="normalize=global"):
        StreamingRecognizer(uni, Featurizer(config), ALPHABET)


@pytest.mark.parametrize(("setting", "message"), [("backbone.bidirectional=true", "unidirectional"),
                                                   ("task.features.normalize=utterance", "normalize=global")])
def test_streaming_predictions_of_an_unstreamable_model_are_refused_before_training(setting, message,
                                                                                    tmp_path: Path) -> None:
    cfg = compose_train_config("speech", ["task.predict.streaming=true", "backbone.bidirectional=false", setting,
                                          "threads=1"], tmp_path)
    with pytest.raises(UserError, match=message):
        run.train(cfg)
    assert not (tmp_path / "checkpoints").exists()


# artifacts


def test_transcript_files_parse(tmp_path: Path) -> None:
    words = [{"word": w, "start": s, "end": e, "confidence": 0.9}
             for w, s, e in [("one", 0.1, 0.4), ("two", 0.5, 0.8), ("nine", 2.0, 2.5)]]
    transcripts = [{"path": "a/call.wav", "text": "one two nine", "duration": 3.0, "words": words},
                   {"path": "b/call.wav", "text": "", "duration": 1.0, "words": []}]
    (tmp_path / "call_2.txt").write_text("zero\n")  # an earlier run's transcript of another call.wav
    paths = write_transcripts(transcripts, tmp_path, max_gap_s=0.5, max_words=7)
    assert sorted(p.name for p in paths) == ["call.srt", "call.txt", "call.vtt", "call_2.srt", "call_2.txt",
                                             "call_2.vtt", "transcripts.jsonl"]
    assert [(tmp_path / f"call_2.{kind}").read_text() for kind in ("txt", "srt", "vtt")] == ["", "", "WEBVTT\n\n"]
    lines = [json.loads(line) for line in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    assert lines[0]["words"] == words and lines[1]["warning"] == "no speech recognised"
    srt = (tmp_path / "call.srt").read_text()
    blocks = [b.splitlines() for b in srt.strip().split("\n\n")]
    assert [b[0] for b in blocks] == ["1", "2"] and [b[2] for b in blocks] == ["one two", "nine"]
    assert re.fullmatch(SRT_TIME, blocks[1][1]).groups() == ("00", "00", "02", "000", "00", "00", "02", "500")
    vtt = (tmp_path / "call.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n00:00:00.100 --> 00:00:00.800\none two\n")
    assert (tmp_path / "call.txt").read_text() == "one two nine\n"


def test_each_input_gets_its_own_transcript_files(tmp_path: Path) -> None:
    # two take.wav and a take_2.wav: the second take.wav must not be written over the third input's files
    transcripts = [{"path": path, "text": path[0], "duration": 1.0, "words": []}
                   for path in ("a/take.wav", "b/take.wav", "c/take_2.wav")]
    write_transcripts(transcripts, tmp_path, max_gap_s=0.5, max_words=7)
    assert sorted(p.read_text() for p in tmp_path.glob("*.txt")) == ["a\n", "b\n", "c\n"]
    assert (tmp_path / "take_2.txt").read_text() == "c\n"  # take_2.wav's transcript under its own name
    long = [{"path": path, "text": "", "duration": None, "words": [], "skipped": "unreadable"}
            for path in (f"a/{'n' * 251}.wav", f"b/{'n' * 251}.wav", f"{'x' * 5000}.wav")]  # the last: a manifest's
    write_transcripts(long, tmp_path / "long", max_gap_s=0.5, max_words=7)
    assert len(list((tmp_path / "long").glob("*.txt"))) == 3  # names cut to fit, a copy's number too
    assert max(len(p.name.encode()) for p in (tmp_path / "long").iterdir()) <= 255


def test_subtitle_times_are_hours_minutes_seconds_and_rounded_milliseconds() -> None:
    srt = to_srt([(1.0006, 1.2854, "one"), (400.0, 3725.5, "two")])
    assert srt == "1\n00:00:01,001 --> 00:00:01,285\none\n\n2\n00:06:40,000 --> 01:02:05,500\ntwo\n"
    assert to_vtt([(59.9996, 61.0, "x")]) == "WEBVTT\n\n00:01:00.000 --> 00:01:01.000\nx\n"


def test_vtt_cue_text_escapes_markup() -> None:
    words = [{"word": w, "start": s, "end": s + 0.2, "confidence": 0.9} for w, s in [("<noise>", 0.1), ("&", 0.4)]]
    vtt = to_vtt(cues(words, max_gap_s=0.5, max_words=7))
    assert vtt.endswith("\n&lt;noise&gt; &amp;\n")


def test_empty_transcripts_are_named_five_at_a_time_then_counted(tmp_path: Path, caplog) -> None:
    transcripts = [{"path": f"quiet_{i}.wav", "text": "", "duration": 1.0, "words": []} for i in range(8)]
    write_transcripts(transcripts, tmp_path, max_gap_s=0.5, max_words=7)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [*(f"quiet_{i}.wav: no speech recognised; the transcript is empty" for i in range(5)),
                        "no speech recognised in 8 of 8 inputs (marked in transcripts.jsonl)"]


def test_cues_split_at_pauses_and_word_limits() -> None:
    words = [{"word": str(i), "start": i * 0.3, "end": i * 0.3 + 0.2} for i in range(5)]
    assert [c[2] for c in cues(words, max_gap_s=0.5, max_words=2)] == ["0 1", "2 3", "4"]
    short = [{"word": "one", "start": 1.0, "end": 1.06}, {"word": "two", "start": 1.5, "end": 1.56},
             {"word": "three", "start": 3.0, "end": 3.06}]
    shown = cues(short, max_gap_s=0.2, max_words=7, min_s=0.7)  # a 60 ms cue cannot be read
    assert [(a, round(b, 6)) for a, b, _ in shown] == [(1.0, 1.5), (1.5, 2.2), (3.0, 3.7)]  # up to the next cue
    assert cues(short, max_gap_s=0.2, max_words=7, min_s=0.7, audio_end=3.4)[-1][1] == 3.4  # and the audio's end
    assert cues(words, max_gap_s=0.5, max_words=2, min_s=0.1) == cues(words, max_gap_s=0.5, max_words=2)
    long_then_short = [{"word": "seven", "start": 0.0, "end": 0.5}, {"word": "two", "start": 0.6, "end": 0.7}]
    assert [c[2] for c in cues(long_then_short, max_gap_s=0.2, max_words=7)] == ["seven two"]  # a pause of 0.1 s
    at_the_limit = [{"word": "one", "start": 0.0, "end": 0.5}, {"word": "two", "start": 1.0, "end": 1.5}]
    assert [c[2] for c in cues(at_the_limit, max_gap_s=0.5, max_words=7)] == ["one two"]  # longer than 0.5 s ends it


def test_a_segments_cues_last_until_the_segment_ends_on_the_files_clock(tmp_path) -> None:
    words = [{"word": "one", "start": 0.35, "end": 0.38, "confidence": 0.9}]  # timed from the file's start
    segment = {"path": "a.wav", "text": "one", "duration": 0.5, "offset": 0.25, "words": words}
    write_transcripts([segment], tmp_path, max_gap_s=0.5, max_words=7, min_cue_s=0.7)
    assert "00:00:00,350 --> 00:00:00,750" in (tmp_path / "a.srt").read_text()  # the segment ends at 0.25 + 0.5


# data sources and bad input


def test_own_training_data_beside_the_bundled_test_split_is_refused_before_training(tmp_path: Path) -> None:
    own = ["task.data.train=my/train.jsonl", "task.data.val=my/val.jsonl"]  # checked before any file is read
    cfg = compose_train_config("speech", [*TINY, *own], tmp_path)
    with pytest.raises(UserError, match=r"task.data.train is data of your own \(my/train.jsonl\), but task.data.test "
                                        r"is left at the bundled demo data in .*: give task.data.test, or null to test "
                                        r"on the validation split$"):
        run.build_task(cfg.task).datamodule()
    bundled_test = compose_train_config("speech", [], tmp_path).task.data.test  # an explicit path is a choice
    chosen = compose_train_config("speech", [*TINY, *own, f"task.data.test={bundled_test}"], tmp_path)
    with pytest.raises(UserError, match=r"^(?!.*left at).*my/train\.jsonl"):  # past the check: reading the data
        run.build_task(chosen.task).datamodule()


def test_manifest_bad_lines_are_errors_naming_file_and_line(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", speak(["one"], seed=1))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio_filepath": "a.wav", "duration": 0.5, "text": "one"}\n{"audio_filepath": "a.wav"}\n')
    with pytest.raises(UserError, match=r"m\.jsonl:2: missing field 'text'"):
        read_manifest(manifest, RATE)
    manifest.write_text('{"audio_filepath": "a.wav", "text": "one"}\nnot json\n')
    with pytest.raises(UserError, match=r"m\.jsonl:2: not a JSON object"):
        read_manifest(manifest, RATE)
    manifest.write_text('{"audio_filepath": "a.wav", "text": 5}\n')  # a reference, when given, is text
    with pytest.raises(UserError, match=r"m\.jsonl:1: field 'text' must be a str, got 5"):
        read_manifest(manifest, RATE, need_text=False)
    manifest.write_text('{"audio_filepath": "a.wav", "text": "one", "duration": "long"}\n')
    with pytest.raises(UserError, match=r"m\.jsonl:1: field 'duration' must be a positive number"):
        read_manifest(manifest, RATE)
    for bad in ("-1", "NaN", "0", "1" * 400):
        manifest.write_text(f'{{"audio_filepath": "a.wav", "text": "one", "duration": {bad}}}\n')
        with pytest.raises(UserError, match=rf"m\.jsonl:1: field 'duration' must be a positive number.*(?i:{bad[:9]})"):
            read_manifest(manifest, RATE)
    manifest.write_text("[" * 100_000 + "\n")
    with pytest.raises(UserError, match=r"m\.jsonl:1: not a JSON object \(maximum recursion depth"):
        read_manifest(manifest, RATE)
    manifest.write_text('{"audio_filepath": "a\\u0000.wav", "text": "one"}\n')
    with pytest.raises(UserError, match=r"m\.jsonl:1: field 'audio_filepath' holds a NUL character"):
        read_manifest(manifest, RATE)
    manifest.write_text('{"audio_filepath": "a.wav", "text": "one", "offset": 1e308, "duration": 1e308}\n'
                        f'{{"audio_filepath": "a.wav", "text": "one", "offset": 0, "duration": 1e308}}\n'
                        f'{{"audio_filepath": "{"x" * 5000}.wav", "text": "one"}}\n')
    left_out: list[Skipped] = []
    assert read_manifest(manifest, RATE, skipped=left_out) == []
    assert [skip.reason.rpartition(": ")[2][:46] for skip in left_out] == [
        "offset 1e+308 s is past the end of its 0.484 s", "0.484 s of audio, but the manifest says 100000",
        "not a readable audio file (File name too long)"]


def test_a_manifest_names_each_lines_speaker_or_none(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", speak(["one"], seed=1))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio_filepath": "a.wav", "text": "one", "speaker": "ann"}\n'
                        '{"audio_filepath": "a.wav", "text": "one", "speaker": 7}\n'
                        '{"audio_filepath": "a.wav", "text": "one"}\n')
    assert [u.speaker for u in read_manifest(manifest, RATE)] == ["ann", "7", None]
    manifest.write_text('{"audio_filepath": "a.wav", "text": "one", "speaker": ["ann"]}\n')
    with pytest.raises(UserError, match=r"m\.jsonl:1: field 'speaker' must be a string or an integer, got \['ann'\]"):
        read_manifest(manifest, RATE)


def test_a_manifest_reads_segments_of_a_longer_recording_by_offset_and_duration(tmp_path: Path, caplog) -> None:
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * RATE)  # 3 s of noise, each second distinct
    written = sf.read(write_wav(tmp_path / "long.wav", samples), dtype="float32")[0]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio_filepath": "long.wav", "offset": 1.0, "duration": 0.5, "text": "one"}\n'
                        '{"audio_filepath": "long.wav", "offset": 2.5, "text": "two"}\n'
                        '{"audio_filepath": "long.wav", "duration": 1.0, "text": "three"}\n'  # whole, warned
                        '{"audio_filepath": "long.wav", "duration": 2.99, "text": "four"}\n'  # within its slack
                        '{"audio_filepath": "long.wav", "offset": 2.8, "duration": 1.0, "text": "five"}\n')
    with caplog.at_level(logging.WARNING):
        read = read_manifest(manifest, RATE)
    expected = [written[RATE:RATE * 3 // 2], written[RATE * 5 // 2:], written, written]
    assert [u.text for u in read] == ["one", "two", "three", "four"]  # five runs past the end: skipped
    assert [u.offset for u in read] == [1.0, 2.5, None, None]  # None: the whole file
    for u, part in zip(read, expected):
        np.testing.assert_array_equal(u.samples.numpy(), part)
    assert "m.jsonl:5 (" in caplog.text and "m.jsonl:3 (" in caplog.text  # five runs short, three long
    assert "0.200 s of audio from 2.8 s on, but the manifest says 1.000 s" in caplog.text
    manifest.write_text('{"audio_filepath": "long.wav", "offset": 3.5, "text": "six"}\n'
                        '{"audio_filepath": "long.wav", "offset": -1, "text": "seven"}\n')
    with caplog.at_level(logging.WARNING), pytest.raises(UserError, match=r"m\.jsonl:2: field 'offset' must be "
                                                                          r"a number of seconds from 0 on"):
        read_manifest(manifest, RATE)
    assert "long.wav: offset 3.5 s is past the end of its 3.000 s" in caplog.text


def test_bad_audio_is_skipped_with_a_warning_naming_the_line(tmp_path: Path, caplog) -> None:
    one = speak(["one"], seed=1)
    write_wav(tmp_path / "good.wav", one)
    write_wav(tmp_path / "silent.wav", np.zeros(4000))
    write_wav(tmp_path / "empty.wav", np.zeros(0))
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00garbage")
    write_wav(tmp_path / "short.wav", one[:1000])
    write_wav(tmp_path / "whole.wav", one)
    whole = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 3])  # its header still announces all of it
    unknown = b"\xff\xff\xff\xff"  # the sizes a writer to a pipe leaves: whole, not truncated
    data = whole.index(b"data")
    (tmp_path / "piped.wav").write_bytes(whole[:4] + unknown + whole[8:data + 4] + unknown + whole[data + 8:])
    lines = [{"audio_filepath": name, "duration": 0.5, "text": "one"}
             for name in ("good.wav", "missing.wav", "silent.wav", "empty.wav", "garbage.wav")]
    lines.append({"audio_filepath": "short.wav", "duration": len(one) / RATE, "text": "one"})
    lines.append({"audio_filepath": "cut.wav", "text": "one"})  # no duration: the header tells
    lines.append({"audio_filepath": "piped.wav", "text": "one"})
    lines[0]["duration"] = len(one) / RATE
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    left_out: list[Skipped] = []
    with caplog.at_level(logging.WARNING):
        utterances = read_manifest(manifest, RATE, skipped=left_out)
    assert [u.path.name for u in utterances] == ["good.wav", "piped.wav"]
    assert [(s.path.name, s.reason.split(" ")[0]) for s in left_out] == [
        (name, f"{manifest}:{line}") for line, name in enumerate(["missing.wav", "silent.wav", "empty.wav",
                                                                  "garbage.wav", "short.wav", "cut.wav"], start=2)]
    messages = [r.getMessage() for r in caplog.records]
    for line, reason in [(2, "no such audio file"), (3, "silent"), (4, "empty"), (5, "not a readable audio file"),
                         (6, "truncated"), (7, "the file is truncated (its header announces")]:
        assert any(f"m.jsonl:{line}" in m and reason in m for m in messages), (line, reason, messages)
    manifest.write_text(json.dumps(lines[1]) + "\n")
    with pytest.raises(UserError, match="no usable utterances"):
        read_source(manifest, RATE)
    manifest.write_text("\n")
    with pytest.raises(UserError, match=r"m.jsonl: the manifest is empty \(expected one JSON object per line\)"):
        read_source(manifest, RATE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no audio files \(.wav, .flac, .ogg\) in this folder"):
        read_source(tmp_path / "empty", RATE)


def test_fsdd_layout_and_split(tmp_path: Path, caplog) -> None:
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for speaker in ("ann", "bob", "spk_02"):  # a speaker's name may hold digits and underscores
        for take in (5, 10, 20):
            write_wav(recordings / f"3_{speaker}_{take}.wav", speak(["three"], seed=take))
    write_wav(recordings / "notes.wav", speak(["one"], seed=0))
    with caplog.at_level(logging.WARNING):
        utterances = read_fsdd(tmp_path, RATE)
    assert len(utterances) == 9 and {u.text for u in utterances} == {"three"}
    assert {(u.speaker, u.take) for u in utterances if u.speaker == "spk_02"} == {("spk_02", t) for t in (5, 10, 20)}
    utterances = [u for u in utterances if u.speaker != "spk_02"]
    assert any("notes.wav" in r.getMessage() for r in caplog.records)
    seen = split_fsdd(utterances, [5, 9], [10, 12], [])
    assert {(u.speaker, u.take) for u in seen["test"]} == {("ann", 5), ("bob", 5)}
    assert {u.take for u in seen["val"]} == {10} and {u.take for u in seen["train"]} == {20}
    unseen = split_fsdd(utterances, None, [10, 12], ["bob"])
    assert {u.speaker for u in unseen["test"]} == {"bob"} and {u.speaker for u in unseen["train"]} == {"ann"}
    with pytest.raises(UserError, match=re.escape("test speaker(s) ['george'] have no recordings here; the speakers "
                                                  "are ['ann', 'bob']")):
        split_fsdd(utterances, None, [10, 12], ["bob", "george"])
    with pytest.raises(UserError, match=re.escape("the FSDD split leaves no test recordings: test takes [0, 4], test "
                                                  "speakers [], validation takes [10, 12], and the recordings here "
                                                  "have takes 5, 10, 20 (check task.data.fsdd_split)")):
        split_fsdd(utterances, [0, 4], [10, 12], [])


def test_a_split_of_ones_own_replaces_that_fsdd_split_and_a_demo_manifest_does_not(tmp_path: Path) -> None:
    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for speaker in ("ann", "bob"):
        for take in (5, 10, 20):
            write_wav(recordings / f"3_{speaker}_{take}.wav", speak(["three"], seed=take))
    write_wav(tmp_path / "mine.wav", speak(["seven"], seed=1))
    (tmp_path / "mine.jsonl").write_text(json.dumps({"audio_filepath": "mine.wav", "text": "seven"}) + "\n")
    fsdd = [f"task.data.fsdd={tmp_path / 'fsdd'}", "task.data.fsdd_split.test_takes=[5,5]",
            "task.data.fsdd_split.val_takes=[10,10]", "task.data.connected.train=0", "task.data.connected.val=0",
            "task.data.connected.test=0"]
    own_test = run.build_task(compose_train_config("speech", [*fsdd, f"task.data.test={tmp_path / 'mine.jsonl'}"],
                                                   tmp_path / "cfg").task)
    assert [u.text for u in own_test.split("test")] == ["seven"]  # as gru-suite-eval task.data.test=... reads it
    assert {u.take for u in own_test.split("train")} == {20} and {u.take for u in own_test.split("val")} == {10}
    trained = compose_train_config("speech", fsdd, tmp_path / "cfg").task  # left at the bundled manifests
    demo = run.build_task(trained)
    assert {(u.speaker, u.take) for u in demo.split("test")} == {("ann", 5), ("bob", 5)}
    demo.datamodule()  # trains: records the splits left at their defaults, as a checkpoint keeps them
    stored = OmegaConf.create(OmegaConf.to_container(trained, resolve=True))  # as a checkpoint stores its config
    assert {(u.speaker, u.take) for u in run.build_task(stored, demo.state).split("test")} == {("ann", 5), ("bob", 5)}
    stored.data.test = str(tmp_path / "mine.jsonl")  # gru-suite-eval ... task.data.test=mine.jsonl
    assert [u.text for u in run.build_task(stored, demo.state).split("test")] == ["seven"]


def test_the_global_normaliser_is_fitted_on_the_training_frames_alone(tmp_path: Path) -> None:
    task = run.build_task(compose_train_config("speech", [*TINY, "task.features.normalize=global"], tmp_path).task)
    task.datamodule()
    plain = Featurizer(task.features, endpointer=task.endpointer())  # without normalisation

    def mean_of(split: str) -> torch.Tensor:
        return plain.model_features(torch.cat(task._transcribed(split, featurizer=plain).raw)).mean(0)

    torch.testing.assert_close(torch.tensor(task.state["mean"]), mean_of("train"))
    assert not torch.allclose(torch.tensor(task.state["mean"]), mean_of("val"), atol=1e-3)


def test_connected_utterances_join_words_with_pauses() -> None:
    pool = read_manifest(BUNDLED / "val.jsonl", RATE)[:10]
    made = list(connect(pool, 5, (2, 4), (0.1, 0.2), 6.0, seed=1, sample_rate=RATE))
    assert len(made) == 5
    for u in made:
        words = u.text.split()
        assert 2 <= len(words) <= 4 and set(words) <= {p.text for p in pool}
        assert len(u.samples) > sum(0.1 * RATE for _ in range(len(words) + 1))
    assert [u.text for u in made] == [u.text for u in connect(pool, 5, (2, 4), (0.1, 0.2), 6.0, 1, RATE)]


def test_connected_utterances_draw_every_word_count_and_level_within_their_bounds() -> None:
    pool = [Utterance(torch.ones(400), RATE, word, Path(f"{word}.wav"), f"{word}.wav") for word in ("one", "two")]
    made = list(connect(pool, 60, (2, 4), (0.01, 0.02), 6.0, seed=1, sample_rate=RATE))
    assert {len(u.text.split()) for u in made} == {2, 3, 4}
    levels = torch.cat([u.samples[u.samples.abs() > 0.1] for u in made])  # the words' samples, not the pauses'
    low, high = 10 ** (-6 / 20), 10 ** (6 / 20)  # +-6 dB of amplitude
    assert low - 1e-6 <= levels.min() < 10 ** (-5 / 20) and 10 ** (5 / 20) < levels.max() <= high + 1e-6


def test_a_take_range_holds_both_its_ends() -> None:
    assert [take for take in range(10) if in_range(take, [3, 5])] == [3, 4, 5]
    assert not in_range(3, None) and not in_range(3, [])


def test_leading_silence_is_room_tone_at_the_recordings_own_level() -> None:
    rng = np.random.default_rng(0)
    quiet = torch.from_numpy(rng.normal(0.0, 0.003, RATE // 2).astype(np.float32))
    word = torch.from_numpy(speak(["six"], seed=2))
    recording = Utterance(torch.cat([quiet, word, quiet]), RATE, "six", Path("six.wav"), "six.wav")
    assert noise_floor(recording.samples, RATE) == pytest.approx(0.003, rel=0.3)
    assert noise_floor(torch.zeros(RATE), RATE) == 1e-4  # digital silence: the faint pause noise
    moved = after_silence(recording, 0.75, rng)
    lead = moved.samples[: int(0.75 * RATE)]
    assert len(moved.samples) == len(recording.samples) + len(lead)
    assert torch.equal(moved.samples[len(lead):], recording.samples)
    assert lead.std().item() == pytest.approx(0.003, rel=0.3) and moved.text == recording.text
    assert "after 0.75 s of silence" in moved.where


# the plugin through the core


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a passed contract check (its short run leaves a checkpoint)."""
    root = tmp_path_factory.mktemp("speech_check")
    check_task_plugin("speech", overrides=TINY, tmp_path=root)
    return root


def test_speech_plugin_passes_the_contract_check(checked: Path) -> None:
    assert (checked / "short_run" / "checkpoints" / "last.ckpt").is_file()


def test_a_folders_transcripts_are_found_whatever_the_case_of_their_suffix(tmp_path: Path, caplog) -> None:
    tone = (0.1 * np.sin(np.arange(RATE // 2) * 0.3)).astype(np.float32)
    for stem, transcript in (("a", "a.TXT"), ("b", "b.txt"), ("c", None), ("c.old", "c.old.txt")):
        write_wav(tmp_path / f"{stem}.WAV", tone)
        if transcript:
            (tmp_path / transcript).write_text(f"{stem} one\n")
    utterances = read_folder(tmp_path, RATE)
    assert [(Path(u.path).name, u.text) for u in utterances] == [("a.WAV", "a one"), ("b.WAV", "b one"),
                                                                 ("c.old.WAV", "c.old one")]  # not c.WAV's
    assert "skipping" in caplog.text and "c.WAV: no transcript c.txt beside it" in caplog.text


def test_cli_transcribes_a_folder_streaming_and_skips_bad_files(checked: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    call = speak(["four", "two"], seed=5)
    write_wav(inbox / "call.wav", np.stack([call, call], axis=1), 16000)
    write_wav(inbox / "quiet.wav", np.zeros(8000))
    (inbox / "call.flac").write_bytes(b"fLaC broken")  # first of the two named call, in input order
    out = tmp_path / "predict"
    out.mkdir()
    (out / "quiet.txt").write_text("five\n")  # an earlier run's transcript of the file now silent
    ckpt = checked / "short_run" / "checkpoints" / "last.ckpt"
    result = run_cli("gru-suite-predict", "task=speech", f"ckpt_path={ckpt}", f"task.predict.input={inbox}",
                     "task.predict.streaming=true", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr + (out / "predict.log").read_text()
    assert "quiet.wav" in log and "silent" in log and "call.flac" in log
    assert f"skipping {inbox / 'quiet.wav'}: the audio is silent" in log  # the file named once
    broken, line, quiet = [json.loads(x) for x in (out / "transcripts.jsonl").read_text().splitlines()]  # input order
    assert [(Path(s["path"]).name, s["text"], s["words"]) for s in (broken, quiet)] == [("call.flac", "", []),
                                                                                        ("quiet.wav", "", [])]
    assert quiet["skipped"].startswith(f"{inbox / 'quiet.wav'}: the audio is silent") and broken["skipped"]
    assert (broken["duration"], quiet["duration"]) == (None, round(8000 / RATE, 3))  # read, then found silent
    assert (out / "quiet.txt").read_text() == (out / "call.srt").read_text() == ""  # none of an earlier run
    assert (out / "call_2.txt").read_text() == (line["text"] + "\n" if line["text"] else "")  # the stem's second
    assert line["path"].endswith("call.wav") and line["duration"] == pytest.approx(len(call) / 16000, abs=1e-3)
    assert line["text"] or line["warning"]
    assert all(0 <= w["start"] < w["end"] <= line["duration"] for w in line["words"])
    if line["text"]:  # streamed: the partials add up to the final transcript
        assert streamed_text(line["partials"]).split() == line["text"].split()


def streamed_text(partials: list[dict]) -> str:
    """The transcript a stream's partials end with: each adds its `added` text, or rewrites it all (`text`)."""
    text = ""
    for update in partials:
        text = update["text"] if "text" in update else text + update["added"]
    return text


def test_a_partial_transcript_keeps_what_it_added_or_its_whole_text_where_it_rewrote() -> None:
    assert partial_change(0.5, "six", "six seven") == {"time": 0.5, "added": " seven"}
    assert partial_change(0.6, "six", "sex") == {"time": 0.6, "text": "sex"}
    assert streamed_text([{"time": 0.1, "added": "six"}, {"time": 0.6, "text": "sex"}, {"time": 1, "added": " nine"}]
                         ) == "sex nine"


def test_partial_transcripts_are_timed_at_the_end_of_the_chunk_that_changed_them(checked: Path, monkeypatch) -> None:
    class OneWordAChunk:  # a recognizer whose text grows by a word with every chunk it accepts
        def __init__(self, *args: object) -> None:
            self.words: list[str] = []

        def accept(self, samples: torch.Tensor) -> str:
            self.words.append("six")
            return " ".join(self.words)

        def finish(self) -> str:
            return " ".join(self.words)

        def emissions(self) -> torch.Tensor:
            return torch.zeros(0)

    monkeypatch.setattr(speech_task, "StreamingRecognizer", OneWordAChunk)
    task = load_checkpoint(checked / "short_run" / "checkpoints" / "last.ckpt").task
    task.cfg.predict.streaming, task.cfg.predict.chunk_ms = True, 250
    samples = torch.zeros(task.features.sample_rate * 3 // 4)  # 0.75 s: three chunks of 250 ms
    ((_, partials),) = task.emissions(None, {"samples": [samples]})
    assert partials == [{"time": 0.25, "added": "six"}, {"time": 0.5, "added": " six"}, {"time": 0.75, "added": " six"}]


def test_streamed_and_beam_predictions_of_a_checkpoint(checked: Path) -> None:
    module = load_checkpoint(checked / "short_run" / "checkpoints" / "last.ckpt")
    task = module.task
    batch = next(iter(task.datamodule().predict_dataloader()))
    with torch.no_grad():
        offline = task.predict_step(module.model, batch)
        task.cfg.predict.streaming = True
        streamed = task.predict_step(module.model, batch)
        task.cfg.predict.streaming = False
        task.cfg.decode.beam_size = 4
        beamed = task.predict_step(module.model, batch)
    assert [t["text"] for t in streamed] == [t["text"] for t in offline]
    assert [[w["word"] for w in t["words"]] for t in streamed] == [[w["word"] for w in t["words"]] for t in offline]
    assert all("partials" in t for t in streamed) and not any("partials" in t for t in offline)
    for t in [*offline, *beamed]:
        assert t["reference"] and 0 <= t["duration"]
        times = [x for w in t["words"] for x in (w["start"], w["end"])]
        assert times == sorted(times) and all(0 <= x <= t["duration"] for x in times)


def test_predict_cli_transcribes_with_an_ensemble(checked: Path, tmp_path: Path) -> None:
    ckpt = checked / "short_run" / "checkpoints" / "last.ckpt"
    twin = tmp_path / "twin.ckpt"
    twin.write_bytes(ckpt.read_bytes())
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name, words in (("a", ["four", "two"]), ("b", ["seven"])):
        write_wav(inbox / f"{name}.wav", speak(words, seed=3), 16000)
    outputs = {}
    for name, extra in (("alone", []), ("ensemble", [f"ensemble=[{twin}]"])):
        result = run_cli("gru-suite-predict", "task=speech", f"ckpt_path={ckpt}", f"task.predict.input={inbox}",
                         f"hydra.run.dir={tmp_path / name}", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = [json.loads(x) for x in (tmp_path / name / "transcripts.jsonl").read_text().splitlines()]
    assert "ensemble of 2 models" in (tmp_path / "ensemble" / "predict.log").read_text()
    assert len(outputs["ensemble"]) == 2
    for alone, together in zip(outputs["alone"], outputs["ensemble"]):  # a model and its twin agree with it
        assert together["path"] == alone["path"] and together["text"] == alone["text"]
        assert [w["word"] for w in together["words"]] == [w["word"] for w in alone["words"]]
        assert [w["start"] for w in together["words"]] == [w["start"] for w in alone["words"]]


def test_an_ensemble_transcribes_the_mean_of_its_members_own_emissions(checked: Path) -> None:
    import pytorch_lightning as pl

    ckpt = checked / "short_run" / "checkpoints" / "last.ckpt"
    first, member = load_checkpoint(ckpt), load_checkpoint(ckpt)
    torch.manual_seed(0)
    with torch.no_grad():  # another model, with another endpointer
        for weight in member.model.parameters():
            weight.add_(0.3 * torch.randn_like(weight))
    member.task.state["endpoint"] = {**first.task.state["endpoint"], "preroll_ms": 80.0}
    data = first.task.datamodule()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    together = [t for batch in run.ensemble_predictions(trainer, first, data, "a.ckpt", [("b.ckpt", member)])
                for t in batch]
    assert not first.task.ensembling and not member.task.ensembling  # each transcribes alone again

    def alone(module, u):
        with torch.no_grad():
            return module.task.emissions(module.model, AudioSet([u], module.task.featurizer()).__getitems__([0]))[0][0]

    utterances = data.dataset("predict").utterances
    assert len(together) == len(utterances) > 1
    differ = 0
    for u, got in zip(utterances, together):
        own = [alone(first, u), alone(member, u)]
        differ += not torch.allclose(own[0], own[1])
        sound = first.task.sounding(u.samples, len(own[0]))  # the first model's, as the ensemble's transcript takes
        expected = first.task.transcript(mean_emissions(own), {"path": str(u.path), "sound": sound,
                                                                 "duration": u.seconds, "reference": u.text})
        assert got["path"] == expected["path"] and got["text"] == expected["text"]
        assert got["words"] == expected["words"]
    assert differ == len(utterances)


def test_an_ensemble_transcribes_a_file_its_first_model_skips(checked: Path, tmp_path: Path) -> None:
    import pytorch_lightning as pl

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    noise = np.random.default_rng(0).normal(0, 1e-3, 16000)
    write_wav(inbox / "click.wav", np.concatenate([noise, np.full(200, 0.5)]), 16000)  # speech in its last frame only
    write_wav(inbox / "six.wav", speak(["six"], seed=2), 16000)
    ckpt = checked / "short_run" / "checkpoints" / "last.ckpt"
    first, member = load_checkpoint(ckpt), load_checkpoint(ckpt)
    for module, preroll in ((first, 0.0), (member, 300.0)):  # the first model finds too little audio in the click
        module.task.state["endpoint"] = {**module.task.state["endpoint"], "preroll_ms": preroll}
        OmegaConf.update(module.task.cfg, "predict.input", str(inbox))
    data = first.task.datamodule()
    assert [u.path.name for u in data.dataset("predict").utterances] == ["six.wav"]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    together = [t for batch in run.ensemble_predictions(trainer, first, data, "a.ckpt", [("b.ckpt", member)])
                for t in batch]
    assert [Path(t["path"]).name for t in together] == ["click.wav", "six.wav"]  # in input order
    manifest = tmp_path / "twice.jsonl"  # one file named by two lines: two transcripts, each with its reference
    manifest.write_text("".join(json.dumps({"audio_filepath": str(inbox / "six.wav"), "text": text}) + "\n"
                                for text in ("six", "six six")))
    for module in (first, member):
        OmegaConf.update(module.task.cfg, "predict.input", str(manifest))
    data = first.task.datamodule()
    together = [t for batch in run.ensemble_predictions(trainer, first, data, "a.ckpt", [("b.ckpt", member)])
                for t in batch]
    assert [t["reference"] for t in together] == ["six", "six six"]


def test_a_segments_words_are_timed_from_the_start_of_its_file(checked: Path, tmp_path: Path) -> None:
    module = load_checkpoint(checked / "short_run" / "checkpoints" / "last.ckpt")
    rate = module.task.features.sample_rate
    six = speak(["six"], seed=2)
    write_wav(tmp_path / "long.wav", np.concatenate([six, six]), rate)
    manifest = tmp_path / "m.jsonl"
    seconds = len(six) / rate
    manifest.write_text(json.dumps({"audio_filepath": "long.wav", "offset": 0, "duration": seconds, "text": "six"})
                        + "\n"
                        + json.dumps({"audio_filepath": "long.wav", "offset": seconds, "text": "six"}) + "\n")
    utterances = read_manifest(manifest, rate)
    with torch.no_grad():
        first, second = module.task.predict_step(module.model, AudioSet(utterances, module.task.featurizer())
                                                 .__getitems__([0, 1]))
    assert first["words"] and first["offset"] == 0 and second["offset"] == round(seconds, 3)  # a segment at 0 too
    module.task.cfg.predict.streaming = True
    with torch.no_grad():
        _, streamed = module.task.predict_step(module.model, AudioSet(utterances, module.task.featurizer())
                                               .__getitems__([0, 1]))
    assert streamed["partials"] and all(seconds < p["time"] <= 2 * seconds + 1e-3 for p in streamed["partials"])
    assert second["text"] == first["text"]
    assert [w["start"] for w in second["words"]] == [round(w["start"] + seconds, 3) for w in first["words"]]


def test_an_ensemble_member_must_share_tokens_frame_rate_and_offline_decoding(checked: Path) -> None:
    ckpt = checked / "short_run" / "checkpoints" / "last.ckpt"
    first, member = load_checkpoint(ckpt), load_checkpoint(ckpt)
    data = first.task.datamodule()
    data.setup("predict")
    member.task.features = replace(first.task.features, sample_rate=2 * first.task.features.sample_rate)
    with pytest.raises(UserError, match="at 16000 Hz, the first model at 8000 Hz"):
        member.task.ensemble_input(first.task, data)
    member.task.features = first.task.features
    member.task.cfg.model.subsample = 2 * int(member.task.cfg.model.subsample)
    with pytest.raises(UserError, match="frames are .* ms apart"):
        member.task.ensemble_input(first.task, data)
    member.task.cfg.model.subsample = first.task.cfg.model.subsample
    member.task.cfg.predict.streaming = True
    with pytest.raises(UserError, match="offline"):
        member.task.ensemble_input(first.task, data)
    member.task.cfg.predict.streaming = False
    member.task.state["vocab"] = {"kind": "chars", "alphabet": "xyz "}
    with pytest.raises(UserError, match="vocabulary differs"):
        member.task.ensemble_input(first.task, data)


def test_speech_benchmark_ensemble_refuses_models_of_another_split(checked: Path, tmp_path: Path) -> None:
    ckpt = checked / "short_run" / "checkpoints" / "last.ckpt"  # trained on the bundled data, not an FSDD split
    (tmp_path / "fsdd" / "recordings").mkdir(parents=True)
    (tmp_path / "fsdd" / "recordings" / "0_george_5.wav").touch()  # the held-out speaker is there: the models are not
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speech.py"), "--fsdd", str(tmp_path / "fsdd"),
                             "--settings", "unseen", "--ensemble", str(ckpt), "--ensemble", str(ckpt)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and f"{ckpt} was trained on another split" in result.stderr, result.stderr[-2000:]


def test_audio_whose_speech_starts_in_its_last_frame_is_skipped_not_crashed_on(tmp_path: Path, caplog) -> None:
    click = torch.zeros(8100)
    click[8020:] = 0.5  # only the last 32 ms frame (samples 7840-8095) hears it
    write_wav(tmp_path / "click.wav", room_tone_before(click[8000:], 8000 / RATE).numpy())
    write_wav(tmp_path / "six.wav", speak(["six"], seed=2))
    cfg = compose_train_config("speech", [f"task.predict.input={tmp_path}", "task.features.endpoint.preroll_ms=0"],
                               tmp_path / "run")
    task = run.build_task(cfg.task)
    task.datamodule()
    with caplog.at_level(logging.WARNING):
        audio = task._predict_set()
    assert [u.path.name for u in audio.utterances] == ["six.wav"]
    assert [(s.path.name, s.reason.endswith("too short to transcribe (from the speech onset on)"), s.duration)
            for s in audio.left_out] == [("click.wav", True, pytest.approx(8100 / RATE))]
    assert any("click.wav" in m and "too short to transcribe" in m for m in caplog.messages)


def test_transcripts_outside_the_alphabet_are_skipped_naming_the_line(tmp_path: Path, caplog) -> None:
    for name, words in [("a.wav", ["one"]), ("b.wav", ["two"]), ("c.wav", ["nine"])]:
        write_wav(tmp_path / name, speak(words, seed=len(name)))
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps({"audio_filepath": n, "duration": 0.1, "text": t})
                                  for n, t in [("a.wav", "One"), ("b.wav", "twö 2"), ("c.wav", "  ")]) + "\n")
    cfg = compose_train_config("speech", [f"task.data.train={manifest}", *NO_EVAL_SPLITS], tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        data = run.build_task(cfg.task).datamodule()
    assert data.dataset("train").texts == ["one"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("train.jsonl:2" in m and "outside the vocabulary" in m and "'ö', '2'" in m for m in messages)
    assert any("train.jsonl:3" in m and "empty transcript" in m for m in messages)


def test_a_hypothesis_is_scored_spaced_as_its_transcript_is_written() -> None:
    scores = Scores()
    scores.update([0, 1], [" one ", "two  three"], ["one", "two three"])  # spaces a character decoder may leave
    assert scores.compute() == {"wer": 0.0, "cer": 0.0, "accuracy": 1.0}


def test_test_transcripts_outside_the_vocabulary_are_scored_as_written(tmp_path: Path, caplog) -> None:
    for name, words in [("a.wav", ["one"]), ("b.wav", ["two"])]:
        write_wav(tmp_path / name, speak(words, seed=len(name)))
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("\n".join(json.dumps({"audio_filepath": n, "duration": 0.1, "text": t})
                                  for n, t in [("a.wav", "one"), ("b.wav", "two ö")]) + "\n")
    cfg = compose_train_config("speech", [f"task.data.test={manifest}"], tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        test = run.build_task(cfg.task).datamodule().dataset("test")
    assert test.texts == ["one", "two ö"]  # the reference keeps what the model cannot write
    assert "test.jsonl: 1 test utterance(s) have" in caplog.text and "scored as written" in caplog.text


def test_test_audio_too_short_for_its_transcript_is_scored_and_left_out_of_the_loss(tmp_path: Path, caplog) -> None:
    write_wav(tmp_path / "a.wav", speak(["one"], seed=1))
    long_text = " ".join(["seven"] * 30)  # more characters than the clip has output frames
    manifest = tmp_path / "test.jsonl"
    lines = [json.dumps({"audio_filepath": "a.wav", "text": text}) for text in ["one", long_text]]
    manifest.write_text("\n".join(lines) + "\n")
    cfg = compose_train_config("speech", [f"task.data.test={manifest}", *TINY], tmp_path / "run")
    task = run.build_task(cfg.task)
    with caplog.at_level(logging.WARNING):
        test = task.datamodule().dataset("test")
    assert test.texts == ["one", long_text] and test.in_loss.tolist() == [True, False]
    assert "test.jsonl: 1 test utterance(s) are too short for their CTC tokens" in caplog.text
    model = run.build_module(cfg, task).model.eval()
    with torch.no_grad():
        both = task.step(model, test.__getitems__([0, 1]), "test")
        alone = task.step(model, test.__getitems__([0]), "test")
    assert both.loss.item() == pytest.approx(alone.loss.item()) and int(both.loss_weight) == 1
    batch = test.__getitems__([0])
    batch["features"] = batch["features"].bfloat16()  # trainer.precision=bf16-true: 16-bit weights and inputs
    with torch.no_grad():
        half = task.step(model.to(torch.bfloat16), batch, "test")
    assert half.loss.dtype == torch.float32 and half.loss.item() == pytest.approx(alone.loss.item(), rel=0.05)
    assert task.scores["test"].pairs.keys() == {0, 1}  # the short one counts in WER/CER as the model's error
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "text": long_text}) + "\n")
    with pytest.raises(UserError, match="no usable test utterances"):
        run.build_task(cfg.task).datamodule().dataset("test")


def test_skipped_utterances_are_named_five_then_counted(tmp_path: Path, caplog) -> None:
    write_wav(tmp_path / "a.wav", speak(["one"], seed=1))
    manifest = tmp_path / "train.jsonl"
    lines = [{"audio_filepath": "a.wav", "text": "one"}] + [{"audio_filepath": "a.wav", "text": "ö"}] * 7
    manifest.write_text("\n".join(map(json.dumps, lines)) + "\n")
    cfg = compose_train_config("speech", [f"task.data.train={manifest}", *NO_EVAL_SPLITS], tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        assert run.build_task(cfg.task).datamodule().dataset("train").texts == ["one"]
    assert sum("outside the vocabulary" in m for m in caplog.messages) == 5
    assert f"{manifest}: skipped 7 in all (1 kept)" in caplog.messages
    manifest.write_text("\n".join(map(json.dumps, lines[1:])) + "\n")
    with pytest.raises(UserError, match=f"^{re.escape(str(manifest))}: no usable train utterances"):
        run.build_task(cfg.task).datamodule().dataset("train")


def test_connected_utterances_need_transcribed_ones(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", speak(["one"], seed=1))
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "text": ""}) + "\n")
    cfg = compose_train_config("speech", [f"task.data.train={manifest}", *NO_EVAL_SPLITS,
                                          "task.data.connected.train=5"], tmp_path / "run")
    with pytest.raises(UserError, match=r"task.data.connected.train=5: the train split has no transcribed utterances"):
        run.build_task(cfg.task).datamodule().dataset("train")


@pytest.mark.parametrize("override, message", [
    ("task.model.lookahead=-1", "task.model.lookahead must be at least 0"),
    ("task.model.subsample=0", "task.model.subsample must be at least 1"),
    ("task.features.online_prior_frames=-5", "task.features.online_prior_frames must be at least 0"),
    ("task.augment.speeds=[1.1,0]", "task.augment.speeds must be positive"),
    ("task.augment.speeds=-0.9", "task.augment.speeds must be positive factors, got [-0.9]"),  # was a TypeError
    ("task.augment.speeds=[fast]", "task.augment.speeds must be a finite number, got 'fast'"),
    ("task.augment.warp=0.6", "task.augment.warp must be between 0 and 0.5"),
    ("task.augment.warp=abc", "task.augment.warp must be a finite number, got 'abc'"),
    ("task.augment.leading_silence_s=-1", "task.augment.leading_silence_s must be at least 0"),
    ("task.augment.leading_silence_fraction=1.5", "task.augment.leading_silence_fraction must be between 0 and 1"),
    ("task.features.endpoint.preroll_ms=-5", "task.features.endpoint.preroll_ms must be at least 0"),
    ("task.features.endpoint.margin_db=loud", "task.features.endpoint.margin_db must be a finite number, got 'loud'"),
    ("task.model.lookahead=abc", "task.model.lookahead must be an integer, got 'abc'"),
    ("task.features.cepstra=41", "task.features.cepstra must be between 1 and task.features.n_mels (40) or null, "
                                 "got 41"),
    ("task.features.cepstra=many", "task.features.cepstra must be an integer, got 'many'"),
    ("task.augment.tilt_db=-3", "task.augment.tilt_db must be at least 0, got -3"),
    ("task.augment.colour_db=-1", "task.augment.colour_db must be at least 0, got -1"),
    ("task.augment.colour_points=1", "task.augment.colour_points must be at least 2, got 1"),
    ("task.augment.colour_points=41", "task.augment.colour_points must be at most n_mels (40), got 41"),
    ("task.augment.freq_masks=two", "task.augment.freq_masks must be an integer, got 'two'"),
    ("task.decode.beam_size=wide", "task.decode.beam_size must be an integer, got 'wide'"),
    ("task.features.n_mels=0", "task.features.n_mels must be at least 1, got 0"),
    ("task.text.alphabet=''", "task.text.alphabet holds no characters, got ''"),
    ("task.model.subsample=null", "task.model.subsample must be set, got null"),
    ("task.features.normalize=online task.features.online_prior_frames=null",
     "task.features.online_prior_frames must be set, got null"),
    ("task.features.sample_rate=0", "task.features.sample_rate must be at least 1000, got 0"),
    ("task.features.normalize=online task.features.online_prior_frames=x",
     "task.features.online_prior_frames must be an integer, got 'x'"),
    ("task.features.f_min_hz=4000", "task.features.f_min_hz must be in [0, 4000) (half of "
                                    "task.features.sample_rate=8000), got 4000"),
    ("task.model.frontend=cnn", "task.model.frontend must be one of ['linear', 'spectral'], got 'cnn'"),
    ("task.model.frontend=spectral task.model.spectral.pool=41", "task.model.spectral.pool must be at most 40"),
    ("task.model.frontend=spectral task.model.spectral.kernel=0",
     "task.model.spectral.kernel must be at least 1, got 0"),
    ("task.model.frontend=spectral task.model.spectral.kernel=3 task.model.spectral.pool=7",
     "task.model.spectral.pool 7 with kernel 3 leaves the top 4 of 40 bins unheard"),
    ("task.model.frontend=spectral +task.model.spectral.stride=2", "task.model.spectral has no setting 'stride'"),
    ("task.model.frontend=spectral task.features.cepstra=13", "it needs task.features.cepstra=null, got 13"),
    ("task.model.frontend=spectral task.model.spectral.channels=many",
     "task.model.spectral.channels must be an integer, got 'many'"),
])
def test_bad_model_and_feature_settings_name_the_field(override: str, message: str, tmp_path: Path) -> None:
    cfg = compose_train_config("speech", override.split(), tmp_path / "run")
    with pytest.raises(UserError, match=re.escape(message)):
        run.build_task(cfg.task)


def test_one_speed_factor_is_a_list_of_one(tmp_path: Path) -> None:
    cfg = compose_train_config("speech", ["task.augment.speeds=1.1"], tmp_path / "run")
    assert SpeechTask(cfg.task).speeds == [1.1]


def test_mel_filters_start_at_f_min_so_a_hum_below_it_is_not_heard() -> None:
    hum = 0.5 * torch.sin(2 * math.pi * 50 * torch.arange(4000) / 8000)
    full, high_passed = LogMel(FeatureConfig())(hum), LogMel(FeatureConfig(f_min_hz=100.0))(hum)
    assert torch.logsumexp(full, 1).mean() - torch.logsumexp(high_passed, 1).mean() > 30 * math.log(10) / 10


def test_spectral_tilt_is_linear_in_the_mel_bin_and_spans_the_drawn_decibels() -> None:
    raw = torch.zeros(5, 40)
    tilted = Augment().tilt(raw, 12.0)
    span_db = (tilted[:, -1] - tilted[:, 0]) * 10 / math.log(10)
    assert torch.allclose(span_db, torch.full((5,), 12.0), atol=1e-4)
    assert torch.allclose(tilted[0].diff(), tilted[0].diff()[:1].expand(39), atol=1e-6)  # linear in the bin
    assert Augment().tilt(raw) is raw  # off by default
    torch.manual_seed(0)
    draws = [(Augment(tilt_db=6.0).tilt(raw)[0, -1] * 2 * 10 / math.log(10)).item() for _ in range(200)]
    assert max(draws) <= 6.0 + 1e-4 and min(draws) >= -6.0 - 1e-4 and max(draws) - min(draws) > 10


def test_colour_passes_through_its_gains_and_is_linear_between_them() -> None:
    raw = torch.zeros(5, 41)
    coloured = Augment().colour(raw, torch.tensor([0.0, 10.0, -10.0]))
    in_db = coloured * 10 / math.log(10)
    assert torch.allclose(in_db[:, [0, 20, 40]], torch.tensor([0.0, 10.0, -10.0]).expand(5, 3), atol=1e-4)
    assert torch.allclose(in_db[0, 10], torch.tensor(5.0), atol=1e-4)  # halfway between the first two
    assert torch.allclose(Augment().tilt(raw, 12.0), Augment().colour(raw, torch.tensor([-6.0, 6.0])))
    assert Augment().colour(raw) is raw  # off by default
    torch.manual_seed(0)
    augment = Augment(colour_db=8.0, colour_points=4)
    draws = torch.stack([augment.colour(raw)[0] for _ in range(200)]) * 10 / math.log(10)
    assert draws.abs().max() <= 8.0 + 1e-4 and draws.std(0).min() > 2  # every bin moves, within the bound
    assert not torch.allclose(draws[0], draws[1])


@pytest.mark.parametrize("f_min_hz", [0.0, 120.0])
def test_vocal_tract_warp_moves_a_tone_to_the_stretched_frequency(f_min_hz: float) -> None:
    config = FeatureConfig(f_min_hz=f_min_hz)
    log_mel, augment = LogMel(config), Augment(warp=0.2, features=config)
    tone = lambda hz: torch.sin(2 * math.pi * hz * torch.arange(4000) / 8000)  # noqa: E731
    peak = lambda frames: frames.mean(0).argmax().item()  # noqa: E731
    centres = mel_centres_hz(config.sample_rate, config.n_mels, f_min_hz)
    assert [peak(log_mel(tone(float(centres[i])))) for i in (8, 17, 30)] == [8, 17, 30]
    for hz, factor in ((600, 1.2), (1500, 0.85), (2500, 1.1)):
        stretched = augment.stretch(log_mel(tone(hz)), factor)
        assert abs(peak(stretched) - peak(log_mel(tone(hz * factor)))) <= 1, (hz, factor)
    raw = log_mel(tone(1000))
    assert torch.allclose(augment.stretch(raw, 1.0), raw, atol=1e-5)
    torch.manual_seed(0)
    draws = [augment.stretch(raw) for _ in range(8)]
    assert all(d.shape == raw.shape for d in draws) and len({peak(d) for d in draws}) > 1
    assert Augment(warp=0.0).stretch(raw) is raw


def test_leading_silence_puts_a_random_stretch_of_room_tone_before_a_share_of_draws() -> None:
    raw, tone = torch.randn(30, 40), torch.randn(50, 40) - 5
    torch.manual_seed(0)
    leads = [Augment(silence_fraction=1.0).lead(raw, tone) for _ in range(200)]
    for led in leads:
        k = len(led) - len(raw)
        assert 0 <= k <= len(tone) and torch.equal(led[k:], raw) and torch.equal(led[:k], tone[:k])
    assert len({len(led) for led in leads}) > 30
    assert max(len(led) for led in leads) - len(raw) > 45 and min(len(led) for led in leads) - len(raw) < 5
    changed = sum(Augment(silence_fraction=0.5).lead(raw, tone) is not raw for _ in range(400))
    assert 160 < changed < 240
    assert Augment().lead(raw, tone) is raw


def test_training_set_holds_each_utterances_room_tone_when_leading_silence_is_on(tmp_path: Path) -> None:
    cfg = compose_train_config("speech", ["task.augment.leading_silence_s=0.5"], tmp_path / "run")
    task = run.build_task(cfg.task)
    data = task.datamodule()
    train, val = data.dataset("train"), data.dataset("val")
    assert val.tones is None and len(train.tones) == len(train.raw)
    frames = task.features.frames(int(0.5 * RATE))
    assert all(t.shape == (frames, 40) for t in train.tones)
    torch.manual_seed(0)
    lengths = [train.__getitems__([0])["lengths"].item() for _ in range(40)]
    assert min(lengths) == len(train.raw[0]) and max(lengths) > len(train.raw[0]) + frames // 2


def test_online_normalisation_streams_and_forgets_a_level_change() -> None:
    torch.manual_seed(0)
    raw, mean, std = torch.randn(60, 40), torch.randn(40), torch.rand(40) + 0.5
    featurizer = Featurizer(FeatureConfig(), mean, std, online_prior=30)
    whole = featurizer.normalize(raw)
    chunks, carry = [], None
    for i in range(0, len(raw), 7):
        out, carry = featurizer.normalize_chunk(raw[i:i + 7], carry)
        chunks.append(out)
    assert torch.allclose(torch.cat(chunks), whole, atol=1e-5)
    # 3 log-units louder: frame t keeps only the part of the offset the prior still weighs, 3 * 30 / (30 + t + 1)
    shift = (featurizer.normalize(raw + 3.0) - whole) * (std + 1e-5)
    expected = 3.0 * 30 / (30 + torch.arange(1, 61.0))
    assert torch.allclose(shift, expected[:, None].expand(60, 40), atol=1e-4)


def test_per_utterance_normalisation_standardises_each_bin() -> None:
    samples = torch.from_numpy(speak(["five", "eight"], seed=9))
    features = Featurizer(FeatureConfig())(samples)
    assert torch.allclose(features.mean(0), torch.zeros(40), atol=1e-4)
    assert torch.allclose(features.std(0, unbiased=False), torch.ones(40), atol=1e-2)


def test_gate_plots_name_the_file_and_label_frames_in_seconds(checked: Path, tmp_path: Path, monkeypatch) -> None:
    from gru_suite import gates

    call = speak(["four", "two"], seed=5)
    write_wav(tmp_path / "call.wav", np.concatenate([np.zeros(8000), call]), 16000)  # half a second of silence first
    module = load_checkpoint(checked / "short_run" / "checkpoints" / "last.ckpt")
    module.task.cfg.predict.input = str(tmp_path / "call.wav")
    drawn: list = []
    monkeypatch.setattr(gates, "save_figure", lambda figure, path: drawn.append(figure) or path)
    view, _ = gates.plot_model_gates(module, tmp_path)
    assert view.title.startswith(f"{tmp_path / 'call.wav'} (")
    frames = drawn[0].axes[0].images[0].get_array().shape[1]
    seconds = [float(step.removesuffix(" s")) for step in view.steps]
    assert len(seconds) == frames and seconds == sorted(seconds)
    assert seconds[1] - seconds[0] == pytest.approx(module.task.frame_seconds, abs=0.006)
    assert 0.3 < seconds[0] < 0.5 < seconds[-1] < 0.5 + len(call) / 16000  # the endpointer skipped the silence
    module.task.cfg.predict.streaming = True
    streamed, _ = gates.plot_model_gates(module, tmp_path)  # chunk after chunk, the state carried on: the same
    assert streamed.title == f"{view.title}, streamed in chunks of {module.task.cfg.predict.chunk_ms} ms"
    assert streamed.steps == view.steps
    np.testing.assert_allclose(drawn[1].axes[0].images[0].get_array(), drawn[0].axes[0].images[0].get_array(),
                               atol=1e-5)
