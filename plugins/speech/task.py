"""Speech recognition: log-mel features, a GRU encoder and a CTC head over characters; timed transcripts out."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics.functional.text import char_error_rate, word_error_rate

from gru_suite.distributed import gather_dict
from gru_suite.config import as_list, check_own_splits, config_number
from gru_suite.errors import Skips, UserError
from gru_suite.task import BackboneFactory, EnsembleMember, SequenceView, Stage, StepOutput, TaskPlugin
from gru_suite.text import TOKENIZER_KINDS
from gru_suite_plugins.speech.audio import FeatureConfig, change_speed
from gru_suite_plugins.speech.data import COLOUR_POINTS, AudioSet, Augment, Featurizer, SpeechData, TranscribedSet
from gru_suite_plugins.speech.decode import (
    blank_frames,
    mean_emissions,
    recognize,
    recognize_words,
    sounding_frames,
)
from gru_suite_plugins.speech.endpoint import Endpointer
from gru_suite_plugins.speech.model import Spectral, SpeechModel
from gru_suite_plugins.speech.sources import (
    Skipped,
    Utterance,
    connect,
    read_fsdd,
    read_source,
    room_tone,
    split_fsdd,
)
from gru_suite_plugins.speech.stream import StreamingRecognizer, check_streamable
from gru_suite_plugins.speech.vocab import Alphabet, Tokens, Vocabulary, normalize_text
from gru_suite_plugins.speech.writer import skipped_line, write_transcripts

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NORMALIZE = ("global", "online", "utterance")
FRONTENDS = ("linear", "spectral")


class Scores:
    """WER and CER over a pass, and exact-match accuracy over its single-word references.

    Transcripts are kept by utterance, so that under DDP the scores cover every
    process's share once (a distributed sampler repeats utterances to even the shares).
    """

    def __init__(self) -> None:
        self.pairs: dict[int, tuple[str, str]] = {}

    def update(self, indices: list[int], hypotheses: list[str], references: list[str]) -> None:
        """Add each utterance's hypothesis, spaced as transcripts are written (decoding may leave spaces at the
        ends or doubled), and its reference."""
        self.pairs.update(zip(indices, zip(map(normalize_text, hypotheses), references)))

    def compute(self) -> dict[str, float]:
        """`wer`, `cer` and (with single-word references) `accuracy` over every DDP process's utterances."""
        pairs = gather_dict(self.pairs)
        if not pairs:
            return {}
        hypotheses, references = (list(side) for side in zip(*pairs.values()))
        scores = {"wer": float(word_error_rate(hypotheses, references)),
                  "cer": float(char_error_rate(hypotheses, references))}
        words = [hyp == ref for hyp, ref in zip(hypotheses, references) if " " not in ref]
        if words:
            scores["accuracy"] = sum(words) / len(words)
        return scores


def partial_change(time: float, before: str, now: str) -> dict[str, Any]:
    """A streamed transcript's change at `time` (s): the text it `added` to the one `before`, or, where it rewrote that,
    the whole `text` (the whole text each time made an hour's partials hundreds of megabytes)."""
    if now.startswith(before):
        return {"time": time, "added": now[len(before):]}
    return {"time": time, "text": now}


class SpeechTask(TaskPlugin):
    """A GRU-CTC recogniser of characters (or of words or subwords, `text.tokens`).

    The state holds the vocabulary (alphabet or tokenizer), the feature and endpointer
    settings, (with `features.normalize=global`) the training set's per-bin log-mel
    mean and standard deviation, so a checkpoint transcribes without the training data,
    and (with `model.speaker_adversary`) the training speakers. Logs `loss` (CTC, per
    target character, averaged over utterances; in training with the speaker adversary,
    plus its `speaker_loss`, beside `ctc_loss` and `speaker_accuracy`) and, for
    validation and test, `wer`, `cer` and `accuracy` (isolated words only).
    """

    numbers = (*TaskPlugin.numbers, ("decode.beam_size", int, 1), ("model.subsample", int, 1),
               ("model.frontend_size", int, 1), ("model.dropout", float, 0, 1, True),
               ("model.lookahead", int, 0), ("model.spectral.channels", int, 1), ("model.spectral.kernel", int, 1),
               ("model.spectral.pool", int, 1), ("model.speaker_adversary", float, 0),
               ("features.online_prior_frames", int, 0),
               ("features.sample_rate", int, 1000), ("features.n_mels", int, 1), ("features.win_ms", float, 1),
               ("features.hop_ms", float, 1),
               *((f"augment.{key}", float, 0)
                 for key in ("gain_db", "tilt_db", "colour_db", "leading_silence_s")),
               ("augment.warp", float, 0, 0.5), ("augment.leading_silence_fraction", float, 0, 1),
               ("augment.colour_points", int, 2),
               *((f"augment.{key}", int, 0) for key in ("freq_masks", "freq_width", "time_masks", "time_width")),
               ("predict.cue_gap_s", float, 0), ("predict.cue_words", int, 1), ("predict.cue_min_s", float, 0),
               ("predict.chunk_ms", float, 1), ("data.connected.gain_db", float, 0),
               *((f"data.connected.{split}", int, 0) for split in ("train", "val", "test")))

    choices = (("features.normalize", NORMALIZE), ("text.tokens", ("chars", *TOKENIZER_KINDS)),
               ("model.frontend", FRONTENDS))
    required = ("decode.beam_size", "model.subsample", "model.frontend_size", "model.dropout", "model.lookahead",
                "features.online_prior_frames", "features.sample_rate", "features.n_mels", "features.win_ms",
                "features.hop_ms", "predict.cue_gap_s", "predict.cue_words", "predict.chunk_ms")
    ranges = (("data.connected.words", int, 1, False), ("data.connected.pause_s", float, 0, False),
              ("data.fsdd_split.test_takes", int, 0, True), ("data.fsdd_split.val_takes", int, 0, True))

    path_settings = ("data.train", "data.val", "data.test", "data.fsdd", "predict.input")
    trained_settings = ("features", "text")

    def __init__(self, cfg: DictConfig, state: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg, state)
        self.restored = "vocab" in self.state
        feats = cfg.features  # its choices are checked with the other settings (`choices`)
        if not self.restored and cfg.text.tokens == "chars":
            if not (letters := normalize_text(str(cfg.text.alphabet or "").replace(" ", ""))):
                raise UserError(f"task.text.alphabet holds no characters, got {cfg.text.alphabet!r}")
            self.state["vocab"] = {"kind": "chars", "alphabet": letters + " "}
        self.state.setdefault("features", {"sample_rate": int(feats.sample_rate), "n_mels": int(feats.n_mels),
                                           "win_ms": float(feats.win_ms), "hop_ms": float(feats.hop_ms),
                                           "cepstra": self._cepstra(feats), "f_min_hz": self._f_min_hz(feats)})
        self.state.setdefault("normalize", str(feats.normalize))
        if self.state["normalize"] == "online":
            self.state.setdefault("online_prior", int(feats.online_prior_frames))
        if not self.restored:
            self.state["endpoint"] = self._endpoint_settings(feats.get("endpoint"))
        self.vocab: Vocabulary | None = self._vocabulary() if "vocab" in self.state else None
        self.features = FeatureConfig(**self.state["features"])
        self.spectral = self._spectral(cfg.model)
        self.speeds = self._speeds(cfg.augment.get("speeds"))
        self.colour_points = self._colour_points(cfg.augment)
        self.scores: dict[str, Scores] = {}
        self._splits: dict[str, list[Utterance]] = {}
        self.ensembling = False
        """Set by `ensemble_input`: `predict_step` returns emissions for `ensemble` to decode together."""

    def _colour_points(self, augment: DictConfig) -> int:
        """`augment.colour_points` (`numbers` checked its minimum; null or absent, as in older checkpoints, is
        the default), at most one per mel bin."""
        points = int(augment.get("colour_points") or COLOUR_POINTS)
        if points > self.features.n_mels:
            raise UserError(f"task.augment.colour_points must be at most n_mels ({self.features.n_mels}), got {points}")
        return points

    @staticmethod
    def _cepstra(feats: DictConfig) -> int | None:
        cepstra = feats.get("cepstra")
        if cepstra is None:
            return None
        if not 1 <= config_number(cepstra, "task.features.cepstra", int) <= int(feats.n_mels):
            raise UserError(f"task.features.cepstra must be between 1 and task.features.n_mels ({feats.n_mels}) or "
                            f"null, got {cepstra}")
        return int(cepstra)

    def _spectral(self, model: DictConfig) -> Spectral | None:
        """The spectral front-end's settings, or None for the linear front-end."""
        kind = model.get("frontend", "linear")  # checkpoints from before the option have no key
        if kind not in FRONTENDS:
            raise UserError(f"task.model.frontend must be one of {list(FRONTENDS)}, got {kind!r}")
        if kind == "linear":
            return None
        if self.features.cepstra is not None:
            raise UserError("task.model.frontend=spectral slides its filters along the mel bins: "
                            f"it needs task.features.cepstra=null, got {self.features.cepstra}")
        block, defaults = model.get("spectral") or {}, {f.name: f.default for f in fields(Spectral)}
        if unknown := sorted(set(block) - set(defaults)):
            raise UserError(f"task.model.spectral has no setting {unknown[0]!r}; it has {list(defaults)}")
        # each set value is already an integer of at least 1 (`numbers`); an unset one takes its default
        settings = Spectral(**{name: default if block.get(name) is None else block[name]
                               for name, default in defaults.items()})
        if problem := settings.problem(self.features.n_mels):
            raise UserError(f"task.model.spectral.{problem[0]} {problem[1]}")
        return settings

    @staticmethod
    def _f_min_hz(feats: DictConfig) -> float:
        f_min = config_number(feats.get("f_min_hz", 0.0), "task.features.f_min_hz")
        if not 0 <= f_min < int(feats.sample_rate) / 2:
            raise UserError(f"task.features.f_min_hz must be in [0, {int(feats.sample_rate) / 2:g}) (half of "
                            f"task.features.sample_rate={feats.sample_rate}), got {f_min:g}")
        return f_min

    @staticmethod
    def _endpoint_settings(endpoint: DictConfig | None) -> dict[str, float] | None:
        if endpoint is None:
            return None
        settings = {key: config_number(endpoint.get(key), f"task.features.endpoint.{key}")
                    for key in ("margin_db", "level_dbfs", "preroll_ms")}
        for key in ("margin_db", "preroll_ms"):
            if settings[key] < 0:
                raise UserError(f"task.features.endpoint.{key} must be at least 0, got {settings[key]:g}")
        return settings

    def _vocabulary(self) -> Vocabulary:
        vocab = self.state["vocab"]
        return Alphabet(vocab["alphabet"]) if vocab["kind"] == "chars" else Tokens.from_state(vocab)

    def _fit_tokens(self) -> None:
        """Train the word or subword tokenizer on the training transcripts."""
        text = self.cfg.text
        texts = [normalize_text(u.text or "") for u in self.split("train")]
        tokens = Tokens.train([t for t in texts if t], str(text.tokens), int(text.vocab_size))
        self.state["vocab"] = tokens.state()
        self.vocab = tokens

    def _fit_speakers(self) -> None:
        """The training speakers, for `model.speaker_adversary`."""
        speakers = sorted({u.speaker for u in self.split("train") if u.speaker})
        if len(speakers) < 2:
            raise UserError(f"task.model.speaker_adversary needs training utterances of at least two speakers, found "
                            f"{speakers or 'none'} (FSDD file names give them; a manifest line its 'speaker' field)")
        self.state["speakers"] = speakers

    # data

    def endpointer(self) -> Endpointer | None:
        """The onset detector of `features.endpoint` (None when off, as in checkpoints made before it)."""
        settings = self.state.get("endpoint")
        if settings is None:
            return None
        preroll = round(settings["preroll_ms"] / self.features.hop_ms)
        return Endpointer(self.features, settings["margin_db"], settings["level_dbfs"], preroll,
                          int(self.cfg.model.subsample))

    def featurizer(self) -> Featurizer:
        if self.state["normalize"] == "utterance":
            return Featurizer(self.features, endpointer=self.endpointer())
        return Featurizer(self.features, torch.tensor(self.state["mean"]), torch.tensor(self.state["std"]),
                          self.state.get("online_prior"), self.endpointer())

    def split(self, name: str) -> list[Utterance]:
        """The `train`, `val` or `test` utterances (that split's manifest/folder of the user's own, else the FSDD
        split where `data.fsdd` is set, else the split's manifest/folder), plus the connected ones `data.connected`
        asks for; read on first use."""
        if name not in self._splits:
            data, rate = self.cfg.data, self.features.sample_rate
            if self._from_fsdd(name):
                split = data.fsdd_split
                fsdd = split_fsdd(read_fsdd(data.fsdd, rate), split.get("test_takes"), split.get("val_takes"),
                                  list(split.get("test_speakers") or []))
                read = {key: utterances for key, utterances in fsdd.items() if self._from_fsdd(key)}
            elif data.get(name) in (None, "") and name == "test":  # the validation split as it is, connected too
                log.info("no task.data.test: testing on the validation split %s", data.val)
                self._splits[name] = self.split("val")
                return self._splits[name]
            elif data.get(name) in (None, ""):  # "" would read the working folder
                raise UserError(f"task.data.{name} is not set: give the {name} split (a manifest or a folder of "
                                "audio), or task.data.fsdd")
            else:
                read = {name: read_source(data[name], rate)}
            for key, utterances in read.items():
                connected = self._connected(key, utterances)
                if connected:  # a checkpoint's own count also joins a manifest given at evaluation: said
                    log.info("the %s split: %d utterances and %d connected ones joined from them "
                             "(task.data.connected.%s=%d; 0 for none)", key, len(utterances), len(connected), key,
                             len(connected))
                self._splits[key] = utterances + connected
        return self._splits[name]

    def _from_fsdd(self, name: str) -> bool:
        """Whether the split `name` comes from FSDD: `data.fsdd` is set and `data.<name>` names no data of the user's
        own: unset, or left at its default (the demo manifest), in training; left as training had it, restored (a
        test manifest given to evaluate an FSDD model is read; a checkpoint older than the record reads FSDD)."""
        data = self.cfg.data
        given = data.get(name)
        if not data.get("fsdd"):
            return False
        if given in (None, ""):
            return True
        if not self.restored:
            return OmegaConf.is_interpolation(data, name)
        left = self.state.get("fsdd_left")  # the splits training left at their defaults, as it read them
        return left is None or name in left and Path(str(given)).resolve() == Path(left[name]).resolve()

    def _source(self, name: str) -> str:
        """Where the split `name` is read from, for messages."""
        data = self.cfg.data
        if self._from_fsdd(name):
            return f"{data.fsdd} ({name} split)"
        return str(data.val if data.get(name) is None else data[name])  # testing falls back on val

    def _connected(self, name: str, pool: list[Utterance]) -> list[Utterance]:
        joined = self.cfg.data.connected
        count = int(joined.get(name) or 0)
        if not count:
            return []
        seed = int(joined.seed) + SPLITS.index(name)
        transcribed = [u for u in pool if u.text]
        if not transcribed:
            raise UserError(f"task.data.connected.{name}={count}: the {name} split has no transcribed utterances "
                            "to join")
        return list(connect(transcribed, count, tuple(joined.words), tuple(joined.pause_s),
                            float(joined.gain_db), seed, self.features.sample_rate))

    @staticmethod
    def _speeds(value: Any) -> list[float]:
        """The factors of `augment.speeds` (a list, or one number), each positive."""
        speeds = [config_number(f, "task.augment.speeds") for f in as_list(value)]
        if any(speed <= 0 for speed in speeds):
            raise UserError(f"task.augment.speeds must be positive factors, got {speeds}")
        return speeds

    def _speed_copies(self, utterances: list[Utterance]) -> list[Utterance]:
        """A copy of every utterance at each speed factor of `augment.speeds` (Kaldi's speed perturbation)."""
        rate = self.features.sample_rate
        return [replace(u, samples=change_speed(u.samples, factor, rate), where=f"{u.where} at speed {factor:g}")
                for factor in self.speeds for u in utterances]

    def _transcribed(self, name: str, augment: Augment | None = None,
                     featurizer: Featurizer | None = None) -> TranscribedSet:
        """A split's transcribed utterances, featurised (by default with the state's
        normalisation); with `augment` (training), plus their speed-perturbed copies, and with
        `augment.leading_silence_s`, each one's room tone (drawn once, seeded) for `Augment.lead`. Training
        skips a transcript the vocabulary cannot write and audio too short for its CTC tokens; validation and
        test score both as written (the latter left out of the loss, which cannot be computed for it)."""
        featurizer = featurizer or self.featurizer()
        raw, targets, texts, tones, speakers, in_loss, too_short = [], [], [], [], [], [], []
        speaker_index = {name: i for i, name in enumerate(self.state.get("speakers") or [])}
        silence_s = (self.cfg.augment.get("leading_silence_s") or 0.0) if augment else 0.0
        rng = np.random.default_rng(0)
        utterances = self.split(name)
        skips, scored_unknown = Skips(self._source(name)), []
        kind = "characters" if isinstance(self.vocab, Alphabet) else "words"
        for u in utterances + (self._speed_copies(utterances) if augment else []):
            text = normalize_text(u.text or "")
            if not text:
                skips.add(u.where, "empty transcript")
                continue
            unknown = self.vocab.unknown(text)
            if unknown and name == "train":
                skips.add(u.where, f"transcript {text!r} has {kind} outside the vocabulary: {unknown}")
                continue
            frames = featurizer.speech(u.samples)[0]
            ids = self.vocab.encode(without(text, unknown, kind))  # the loss's target; the metrics see `text`
            needed = len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))
            short = len(frames) // int(self.cfg.model.subsample) < needed
            if short and name == "train":
                skips.add(u.where, f"{u.seconds:.2f} s of audio is too short for the {len(ids)} CTC tokens of {text!r}")
                continue
            if short:
                too_short.append(f"{u.where} ({u.seconds:.2f} s, {len(ids)} tokens)")
            in_loss.append(not short)
            if unknown:
                scored_unknown.append(f"{u.where} {unknown}")
            raw.append(frames)
            speakers.append(speaker_index.get(u.speaker, -1))
            targets.append(ids)
            texts.append(text)
            if silence_s:
                tones.append(featurizer.raw(room_tone(u, silence_s, rng)))
        skips.report(len(raw))
        if scored_unknown:
            log.warning("%s: %d %s utterance(s) have %s outside the vocabulary, which the model cannot write; they "
                        "are scored as written (first: %s)", skips.source, len(scored_unknown), name, kind,
                        scored_unknown[0])
        if too_short:
            log.warning("%s: %d %s utterance(s) are too short for their CTC tokens, so the model cannot write them; "
                        "they are scored as written and left out of the loss (first: %s)", skips.source,
                        len(too_short), name, too_short[0])
        if not any(in_loss):
            raise UserError(f"{skips.source}: no usable {name} utterances (see the warnings above)")
        return TranscribedSet(raw, targets, texts, featurizer, augment, tones if silence_s else None, speakers,
                              in_loss)

    def _fit_normalizer(self, train: TranscribedSet) -> None:
        frames = train.featurizer.model_features(torch.cat(train.raw))
        self.state["mean"] = frames.mean(0).tolist()
        self.state["std"] = frames.std(0, unbiased=False).tolist()
        train.featurizer = self.featurizer()

    def _predict_set(self) -> AudioSet:
        """`predict.input` (a folder, a manifest or an audio file), or else the test split."""
        source, left_out = self.cfg.predict.get("input"), []
        rate = self.features.sample_rate
        utterances = read_source(source, rate, need_text=False, skipped=left_out) if source else self.split("test")
        return self._audio_set(utterances, source or "the test split", left_out)

    def _audio_set(self, utterances: list[Utterance], source: str, left_out: list[Skipped] | None = None) -> AudioSet:
        """The `utterances` long enough to transcribe from their speech onset on (a warning names each other, and
        they are added to `left_out`, the inputs skipped before them)."""
        featurizer, usable, speech, left_out = self.featurizer(), [], [], [] if left_out is None else left_out
        for position, u in enumerate(utterances):
            frames, skipped = featurizer.speech(u.samples)
            if len(frames) < int(self.cfg.model.subsample):
                reason = f"{u.seconds:.3g} s is too short to transcribe (from the speech onset on)"
                log.warning("skipping %s: %s", u.where, reason)
                left_out.append(Skipped(u.path, f"{u.where}: {reason}", u.offset, position, read=True,
                                        duration=u.seconds))
            else:
                usable.append(u)
                speech.append((frames, skipped))
        if not usable:
            raise UserError(f"nothing to transcribe in {source} (see the warnings above)")
        return AudioSet(usable, featurizer, speech, read=utterances, left_out=left_out)

    def datamodule(self) -> SpeechData:
        aug = self.cfg.augment

        def setting(key: str) -> float:  # numbers checked by `numbers`; null (or absent) is off
            return aug.get(key) or 0

        augment = Augment(setting("gain_db"), setting("freq_masks"), setting("freq_width"), setting("time_masks"),
                          setting("time_width"), setting("warp"), self.features,
                          silence_fraction=setting("leading_silence_fraction"), tilt_db=setting("tilt_db"),
                          colour_db=setting("colour_db"), colour_points=self.colour_points)
        builders = {
            "train": lambda: self._transcribed("train", augment),
            "val": lambda: self._transcribed("val"),
            "test": lambda: self._transcribed("test"),
            "predict": self._predict_set,
        }
        if not self.restored:  # a new model: read the data and fit the vocabulary and normaliser now
            if self.cfg.data.get("fsdd"):
                self.state["fsdd_left"] = {name: str(self.cfg.data[name]) for name in SPLITS
                                           if self.cfg.data.get(name) not in (None, "") and self._from_fsdd(name)}
            else:
                check_own_splits(self.cfg.data, {"val": "task.data.val (required)",
                                                 "test": "task.data.test, or null to test on the validation split"})
            if self.vocab is None:
                self._fit_tokens()
            if self._adversary_scale() > 0:
                self._fit_speakers()
            train = self._transcribed("train", augment, Featurizer(self.features, endpointer=self.endpointer()))
            if self.state["normalize"] != "utterance":
                self._fit_normalizer(train)
            builders["train"] = lambda: train
        data = self.cfg.data
        return SpeechData(builders, int(data.batch_size), int(data.get("num_workers", 0)))

    # model

    def build_model(self, backbone: BackboneFactory) -> SpeechModel:
        model = self.cfg.model
        if self._adversary_scale() > 0 and not self.state.get("speakers"):
            raise UserError("task.model.speaker_adversary needs a model trained with it from the start: this "
                            "checkpoint has no speaker classifier (train a new model, or set it to 0)")
        speech_model = SpeechModel(backbone, self.features.size, len(self.vocab), int(model.subsample),
                                   int(model.frontend_size), float(model.dropout), int(model.lookahead), self.spectral,
                                   len(self.state.get("speakers") or []), self._adversary_scale())
        if self.cfg.predict.get("streaming"):  # refused now, not after training
            check_streamable(speech_model, self.featurizer())
        return speech_model

    def _adversary_scale(self) -> float:
        """`model.speaker_adversary` (absent or null, as in older checkpoints: 0, off)."""
        return float(self.cfg.model.get("speaker_adversary") or 0)

    @property
    def frame_seconds(self) -> float:
        """Seconds between the model's output frames."""
        return self.features.hop_length * int(self.cfg.model.subsample) / self.features.sample_rate

    def step(self, model: SpeechModel, batch: dict, stage: Stage) -> StepOutput:
        hidden, out_lengths, _ = model.encode(batch["features"], batch["lengths"])
        log_probs = model.emit(hidden).float()  # CTC in float32, as autocast runs it: a CPU has no 16-bit CTC
        losses = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], out_lengths, batch["target_lengths"],
                            blank=0, reduction="none", zero_infinity=True) / batch["target_lengths"].clamp(min=1)
        if stage == "train":  # every training utterance is long enough for its tokens (the others are skipped)
            loss = losses.mean()
        else:
            in_loss = batch["in_loss"]
            loss = (losses * in_loss).sum() / in_loss.sum().clamp(min=1)
        if stage == "train" and model.adversary is not None and model.adversary.scale > 0:
            speaker_loss, speaker_accuracy = model.adversary(hidden, out_lengths, batch["speakers"])
            metrics = {"ctc_loss": loss.detach()}
            if batch["any_speaker"]:  # the epoch means cover batches with a known speaker
                metrics |= {"speaker_loss": speaker_loss.detach(), "speaker_accuracy": speaker_accuracy}
            return StepOutput(loss + speaker_loss, len(batch["texts"]), metrics)
        if stage != "train":
            beam = 1 if stage == "val" else int(self.cfg.decode.beam_size)
            on_cpu = zip(log_probs.cpu(), out_lengths.tolist())  # one copy a batch, not one per utterance
            hypotheses = [self.vocab.decode(recognize(lp[:n], beam)) for lp, n in on_cpu]
            self.scores.setdefault(stage, Scores()).update(batch["index"], hypotheses, batch["texts"])
            return StepOutput(loss, len(batch["texts"]), loss_weight=batch["in_loss"].sum())
        return StepOutput(loss, len(batch["texts"]))

    def epoch_end(self, stage: Stage) -> dict[str, float]:
        return self.scores.pop(stage, Scores()).compute() if stage != "train" else {}

    # transcription

    def emissions(self, model: SpeechModel, batch: dict) -> list[tuple[Tensor, list[dict[str, Any]] | None]]:
        """Per-utterance log-probabilities (T_i, classes) in one pass; or, with `predict.streaming`, streamed in
        `predict.chunk_ms` chunks, with the partial transcripts (`time` at the chunk's end, `text`) as they changed."""
        if not self.cfg.predict.get("streaming"):
            log_probs, out_lengths, _ = model(batch["features"], batch["lengths"])
            on_cpu = zip(log_probs.cpu(), out_lengths.tolist(), batch["skipped"])  # one copy a batch
            return [(torch.cat([blank_frames(skip // model.subsample, len(self.vocab)), lp[:n]]), None)
                    for lp, n, skip in on_cpu]
        rate = self.features.sample_rate
        chunk = max(1, round(float(self.cfg.predict.chunk_ms) * rate / 1000))
        results = []
        for samples in batch["samples"]:
            stream = StreamingRecognizer(model, self.featurizer(), self.vocab)
            partials: list[dict[str, Any]] = []
            shown = ""
            for start in range(0, len(samples), chunk):
                end = min(start + chunk, len(samples))
                text = stream.accept(samples[start:end].cpu())
                if end == len(samples):  # the last chunk: emit the frames that waited for lookahead
                    text = stream.finish()
                if text != shown:
                    partials.append(partial_change(round(end / rate, 3), shown, text))
                    shown = text
            results.append((stream.emissions(), partials))
        return results

    def describe_sequence(self, datamodule: SpeechData, batch: dict, sample: int) -> SequenceView:
        """The audio file and each encoder frame's time in it (seconds, after the silence the endpointer skipped).
        A streamed prediction feeds the encoder the same frames chunk by chunk, carrying its state."""
        title = f"{batch['paths'][sample]} ({batch['durations'][sample]:.2f} s)"
        if self.cfg.predict.get("streaming"):
            title += f", streamed in chunks of {self.cfg.predict.chunk_ms} ms"
        subsample = int(self.cfg.model.subsample)
        start, frames = int(batch["skipped"][sample]) // subsample, int(batch["lengths"][sample]) // subsample
        return SequenceView(title, [f"{(start + t) * self.frame_seconds:.2f} s" for t in range(frames)])

    def sounding(self, samples: Tensor, frames: int) -> Tensor:
        """Which of an utterance's `frames` output frames hold sound (`sounding_frames`), from its `samples`."""
        return sounding_frames(samples, round(self.frame_seconds * self.features.sample_rate), frames)

    def transcript(self, log_probs: Tensor, source: dict[str, Any],
                   partials: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Text and timed words of one utterance's emissions, with its reference and partials when known.
        `source`: its `path`, `sound` (`sounding`; None: words end with their tokens), `duration` (s), `reference`
        (or None) and `offset` (s) in its file, from which the times count (a manifest's segment of a longer
        recording; None: the whole file)."""
        segment_start = source.get("offset")
        offset = float(segment_start or 0)
        words = [replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3))
                 for w in recognize_words(log_probs, int(self.cfg.decode.beam_size), self.vocab, self.frame_seconds,
                                          source["duration"], source.get("sound"))]
        result: dict[str, Any] = {"path": source["path"], "text": " ".join(w.word for w in words),
                                  "duration": round(source["duration"], 3), "words": [w.as_dict() for w in words]}
        if segment_start is not None:
            result["offset"] = round(offset, 3)
        if source.get("reference") is not None:
            result["reference"] = normalize_text(source["reference"])
        if partials is not None:
            result["partials"] = [{**p, "time": round(p["time"] + offset, 3)} for p in partials]
        return result

    def predict_step(self, model: SpeechModel, batch: dict) -> list[dict[str, Any]]:
        emitted = self.emissions(model, batch)
        sources = [{"path": p, "sound": self.sounding(x, len(e)), "duration": d, "reference": r, "offset": o}
                   for p, x, (e, _), d, r, o in zip(batch["paths"], batch["samples"], emitted, batch["durations"],
                                                    batch["references"], batch["offsets"])]
        if self.ensembling:  # the ensemble decodes its members' emissions together
            return [{**s, "position": n, "log_probs": e} for (e, _), s, n in zip(emitted, sources, batch["positions"])]
        return [{**self.transcript(e, s, partials), "position": n}
                for (e, partials), s, n in zip(emitted, sources, batch["positions"])]

    def check_member(self, first: SpeechTask) -> None:
        """Refuse to join `first` in an ensemble unless this model hears audio at its sample rate and writes the
        same tokens at the same frame rate, offline (a streamed partial transcript is one model's)."""
        if self.features.sample_rate != first.features.sample_rate:
            raise UserError(f"it reads audio at {self.features.sample_rate} Hz, the first model at "
                            f"{first.features.sample_rate} Hz; an ensemble's models must share the sample rate")
        if self.state["vocab"] != first.state["vocab"]:
            raise UserError("its vocabulary differs from the first model's; an ensemble's models must write the same "
                            "tokens (train them with the same task.text settings on the same transcripts)")
        if self.frame_seconds != first.frame_seconds:
            raise UserError(f"its output frames are {self.frame_seconds * 1000:g} ms apart, the first model's "
                            f"{first.frame_seconds * 1000:g} ms; an ensemble's models must share the frame rate")
        if self.cfg.predict.get("streaming") or first.cfg.predict.get("streaming"):
            raise UserError("an ensemble transcribes offline: drop task.predict.streaming")

    def ensemble_input(self, first: SpeechTask, datamodule: SpeechData) -> SpeechData:
        """The utterances `datamodule` (the `first` model's) has read for prediction, those it skipped too, in this
        model's features (`check_member` first). Until `ensemble` has combined them, both models predict emissions,
        not transcripts (each utterance's (T, V) log-probabilities are kept in memory)."""
        self.check_member(first)
        self.ensembling = first.ensembling = True
        utterances = datamodule.dataset("predict").read
        return SpeechData({"predict": lambda: self._audio_set(utterances, "the first model's input")},
                          int(self.cfg.data.batch_size), int(self.cfg.data.get("num_workers", 0)))

    def ensemble(self, members: Sequence[EnsembleMember]) -> list[list[dict[str, Any]]]:
        """Each utterance's transcript decoded from the members' mean per-frame probabilities; one that a member
        skipped (too short from its speech onset on) is averaged over the others, with a warning."""
        by_input = [{item["position"]: item["log_probs"] for batch in m.predictions for item in batch}
                    for m in members]  # by place in the input, not path: two inputs may name one file
        for member in members:
            member.task.ensembling = False  # the models transcribe alone again
        items: dict[int, dict[str, Any]] = {}
        for item in (item for m in members for batch in m.predictions for item in batch):
            items.setdefault(item["position"], item)  # the first model's, where it transcribed that input
        return [[self._ensemble_transcript(items[n], by_input) for n in sorted(items)]]  # in input order

    def _ensemble_transcript(self, item: dict[str, Any], by_input: list[dict[int, Tensor]]) -> dict[str, Any]:
        emitted = [member[item["position"]] for member in by_input if item["position"] in member]
        if len(emitted) < len(by_input):
            log.warning("%s: transcribed by %d of the ensemble's %d models (the others skipped it)", item["path"],
                        len(emitted), len(by_input))
        return {**self.transcript(mean_emissions(emitted), item), "position": item["position"]}

    def write_predictions(self, predictions: list[Any], datamodule: SpeechData, out_dir: Path) -> list[Path]:
        """The transcripts, and a line for each input skipped (`skipped_line`), in input order (each transcript's
        `position` among the utterances read)."""
        transcribed = {t["position"]: {k: v for k, v in t.items() if k != "position"}
                       for batch in predictions for t in batch}
        left_out = [s for s in datamodule.dataset("predict").left_out if not (s.read and s.position in transcribed)]
        placed = [*((position, 1, t) for position, t in transcribed.items()),
                  *((s.position, 0, skipped_line(s)) for s in left_out)]  # an unread input goes before its position
        out = self.cfg.predict
        return write_transcripts([line for *_, line in sorted(placed, key=lambda p: p[:2])], out_dir,
                                 float(out.cue_gap_s), int(out.cue_words), float(out.get("cue_min_s") or 0))


def without(text: str, unknown: list[str], kind: str) -> str:
    """`text` less its `unknown` characters or words (`kind`), as far as the vocabulary can write it."""
    if not unknown:
        return text
    if kind == "characters":
        return " ".join("".join(c for c in text if c not in unknown).split())
    return " ".join(word for word in text.split() if word not in unknown)
