"""Streaming recognition: audio in chunks, the GRU state carried from chunk to chunk, partial transcripts out."""

from __future__ import annotations

import torch
from torch import Tensor

from gru_suite.backbone import State
from gru_suite.errors import UserError
from gru_suite_plugins.speech.audio import RunningSum
from gru_suite_plugins.speech.data import Featurizer
from gru_suite_plugins.speech.decode import greedy
from gru_suite_plugins.speech.model import SpeechModel
from gru_suite_plugins.speech.vocab import Vocabulary


class StreamingRecognizer:
    """Feeds a unidirectional model chunk by chunk; after `finish()` its emissions equal the offline model's.

    Samples wait until they fill a whole feature frame, frames until they fill a
    front-end group of `subsample`, encoder outputs until the model's lookahead has
    arrived, so each network input is what the offline pass sees; only the GRU state
    crosses chunk boundaries. Call under `torch.no_grad()` with the model in eval mode.
    """

    def __init__(self, model: SpeechModel, featurizer: Featurizer, vocab: Vocabulary) -> None:
        if model.backbone.bidirectional:
            raise UserError("streaming needs a unidirectional model (backbone.bidirectional=false)")
        if not featurizer.streamable:
            raise UserError("streaming needs task.features.normalize=global or online (per-utterance statistics "
                            "see the future)")
        self.model = model
        self.featurizer = featurizer
        self.vocab = vocab
        config = featurizer.config
        self.pending = torch.zeros(0)
        self.frames = torch.zeros(0, config.n_mels)
        self.running: RunningSum | None = None
        self.state: State | None = None
        self.waiting = torch.zeros(0, model.backbone.output_size)
        self.emitted: list[Tensor] = []

    def accept(self, samples: Tensor) -> str:
        """Take the next chunk of samples (N,); return the partial transcript so far."""
        config = self.featurizer.config
        audio = torch.cat([self.pending, samples.float()])
        whole = config.frames(len(audio))
        if whole:
            raw = self.featurizer.raw(audio[: (whole - 1) * config.hop_length + config.n_fft])
            normalized, self.running = self.featurizer.normalize_chunk(raw, self.running)
            self.frames = torch.cat([self.frames, normalized])
            audio = audio[whole * config.hop_length:]
        self.pending = audio
        ready = len(self.frames) // self.model.subsample * self.model.subsample
        if ready:
            hidden, _, self.state = self.model.encode(self.frames[None, :ready], None, self.state)
            self.frames = self.frames[ready:]
            self.waiting = torch.cat([self.waiting, hidden[0]])
            context = self.model.lookahead.context
            if len(self.waiting) > context:
                self.emitted.append(self.model.emit(self.waiting[None], complete=False)[0])
                self.waiting = self.waiting[len(self.waiting) - context:]
        return self.text()

    def finish(self) -> str:
        """End the stream: emit the frames that waited for lookahead; return the final transcript."""
        if len(self.waiting):
            self.emitted.append(self.model.emit(self.waiting[None])[0])
            self.waiting = self.waiting[:0]
        return self.text()

    def emissions(self) -> Tensor:
        """Log-probabilities (T, classes) of every output frame so far."""
        if not self.emitted:
            return torch.zeros(0, len(self.vocab))
        return torch.cat(self.emitted)

    def text(self) -> str:
        """Greedy transcript of the emissions so far."""
        return self.vocab.decode(greedy(self.emissions()))
