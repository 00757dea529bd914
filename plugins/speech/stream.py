"""Streaming recognition: audio in chunks, the GRU state carried from chunk to chunk, partial transcripts out."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gru_suite.backbone import State
from gru_suite.errors import UserError
from gru_suite_plugins.speech.audio import RunningSum
from gru_suite_plugins.speech.data import Featurizer
from gru_suite_plugins.speech.decode import blank_frames, greedy
from gru_suite_plugins.speech.model import SpeechModel
from gru_suite_plugins.speech.vocab import BLANK, Vocabulary


def check_streamable(model: SpeechModel, featurizer: Featurizer) -> None:
    """A UserError unless `model` over `featurizer`'s features can transcribe chunk by chunk."""
    if model.backbone.bidirectional:
        raise UserError("streaming (task.predict.streaming=true) needs a unidirectional model, one trained with "
                        "backbone.bidirectional=false; this one reads both ways: transcribe offline with it")
    if not featurizer.streamable:
        raise UserError("streaming (task.predict.streaming=true) needs a model trained with task.features.normalize="
                        "global or online; this one normalizes each utterance by its own statistics, which see the "
                        "future: transcribe offline with it")


class StreamingRecognizer:
    """Feeds a unidirectional model chunk by chunk; after `finish()` its emissions equal the offline model's.

    Samples wait until they fill a whole feature frame, frames until the featurizer's
    endpointer finds the speech onset (or the stream ends) and then until they fill a
    front-end group of `subsample`, encoder outputs until the model's lookahead has
    arrived, so each network input is what the offline pass sees; only the GRU state
    crosses chunk boundaries. Features are computed on the CPU; the network runs on the
    model's device and its emissions come back to the CPU. Call under `torch.no_grad()`
    with the model in eval mode.
    """

    def __init__(self, model: SpeechModel, featurizer: Featurizer, vocab: Vocabulary) -> None:
        check_streamable(model, featurizer)
        self.model = model
        self.device = next(model.parameters()).device
        self.featurizer = featurizer
        self.vocab = vocab
        config = featurizer.config
        self.pending = torch.zeros(0)
        self.leading: Tensor | None = torch.zeros(0, config.n_mels) if featurizer.endpointer else None
        self.quietest = math.inf
        self.frames = torch.zeros(0, config.size)
        self.running: RunningSum | None = None
        self.state: State | None = None
        self.waiting = torch.zeros(0, model.backbone.output_size, device=self.device)
        self.emitted: list[Tensor] = []
        self.tokens: list[int] = []  # greedy decoding of the emissions so far, kept up to date as they arrive
        self.last_best = BLANK  # the best class of the last output frame
        self.transcript = ""

    def accept(self, samples: Tensor) -> str:
        """Take the next chunk of samples (N,); return the partial transcript so far."""
        config = self.featurizer.config
        audio = torch.cat([self.pending, samples.float()])
        whole = config.frames(len(audio))
        if whole:
            raw = self.featurizer.raw(audio[: (whole - 1) * config.hop_length + config.n_fft])
            audio = audio[whole * config.hop_length:]
            self._feed(self._speech(raw))
        self.pending = audio
        return self.text()

    def _speech(self, raw: Tensor) -> Tensor:
        """The frames of `raw` to feed on: all once speech has started; before that none (they wait in
        `leading`) until the onset, when those before the endpointer's preroll become blank output frames."""
        if self.leading is None:
            return raw
        onset, self.quietest = self.featurizer.endpointer.onset(raw, self.quietest)
        held = torch.cat([self.leading, raw])
        if onset is None:
            self.leading = held
            return raw[:0]
        skip = self.featurizer.endpointer.skipped(len(self.leading) + onset)
        self._emit(blank_frames(skip // self.model.subsample, len(self.vocab)))
        self.leading = None
        return held[skip:]

    def _feed(self, raw: Tensor) -> None:
        """Normalise raw frames and run the model over every whole front-end group that has arrived."""
        normalized, self.running = self.featurizer.normalize_chunk(raw, self.running)
        self.frames = torch.cat([self.frames, normalized])
        ready = len(self.frames) // self.model.subsample * self.model.subsample
        if ready:
            hidden, _, self.state = self.model.encode(self.frames[None, :ready].to(self.device), None, self.state)
            self.frames = self.frames[ready:]
            self.waiting = torch.cat([self.waiting, hidden[0]])
            context = self.model.lookahead.context
            if len(self.waiting) > context:
                self._emit(self.model.emit(self.waiting[None], complete=False)[0].cpu())
                self.waiting = self.waiting[len(self.waiting) - context:]

    def finish(self) -> str:
        """End the stream: feed the frames still waiting for a speech onset (none came: all of them are
        transcribed), emit those that waited for lookahead; return the final transcript."""
        if self.leading is not None:
            held, self.leading = self.leading, None
            self._feed(held)
        if len(self.waiting):
            self._emit(self.model.emit(self.waiting[None])[0].cpu())
            self.waiting = self.waiting[:0]
        return self.text()

    def emissions(self) -> Tensor:
        """Log-probabilities (T, classes) of every output frame so far."""
        if not self.emitted:
            return torch.zeros(0, len(self.vocab))
        return torch.cat(self.emitted)

    def _emit(self, log_probs: Tensor) -> None:
        """Add output frames (T, classes), decoding only them (`Vocabulary.decode_more`: characters add their own
        text, so each chunk costs the same however long the stream; a tokenizer's tokens are decoded anew)."""
        self.emitted.append(log_probs)
        if not len(log_probs):
            return
        tokens = greedy(log_probs, after=self.last_best)
        self.last_best = int(log_probs[-1].argmax())
        if tokens:
            self.transcript = self.vocab.decode_more(self.transcript, self.tokens, tokens)
            self.tokens += tokens

    def text(self) -> str:
        """Greedy transcript of the emissions so far."""
        return self.transcript
