"""The classifier: token embedding -> shared (bidirectional) GRU over packed sequences -> pooling -> dropout
-> linear head, with a temperature that calibrates its probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gru_suite.backbone import GRUBackbone, valid_mask
from gru_suite.errors import UserError
from gru_suite.task import BackboneFactory
from gru_suite.text import PAD_ID, UNK_ID

Pooling = Literal["attention", "max_mean"]
POOLINGS = ("attention", "max_mean")


class AttentionPool(nn.Module):
    """Additive attention over the valid steps; the weights are the tokens' importance."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.project = nn.Linear(size, size)
        self.score = nn.Linear(size, 1, bias=False)
        self.output_size = size

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.score(torch.tanh(self.project(h))).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return torch.einsum("bt,bth->bh", weights, h), weights


class MaxMeanPool(nn.Module):
    """Max and mean over the valid steps, joined; a token's importance is its share of the max-pooled
    features it supplies (as in InferSent's visualisation)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.output_size = 2 * size

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        top, winner = h.masked_fill(~mask[..., None], float("-inf")).max(1)
        mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        weights = F.one_hot(winner, h.size(1)).float().mean(1)
        return torch.cat([top, mean], -1), weights


class SentimentModel(nn.Module):
    """Token ids (B, T) with lengths -> class logits (B, C) and token importance (B, T) (zero at padding).

    `temperature` (a buffer, saved with the weights) divides the logits in `probabilities`;
    it is fitted on validation data (`fit_temperature`). With `lm_words`, language-model heads
    over the most frequent words let training add `lm_loss` (the token ids must rank words by
    frequency, as the suite's word tokenizer does).
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        vocab_size: int,
        classes: int,
        embed_size: int = 128,
        pooling: Pooling = "attention",
        dropout: float = 0.3,
        bidirectional: bool = True,
        lm_words: int = 0,
        word_dropout: float = 0.0,
        word_counts: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= word_dropout < 1:
            raise UserError(f"task.model.word_dropout must be in [0, 1), got {word_dropout}")
        self.word_dropout = word_dropout
        if pooling not in POOLINGS:
            raise UserError(f"task.model.pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        self.embedding = nn.Embedding(vocab_size, embed_size, padding_idx=PAD_ID)
        frequencies = None
        if word_counts is not None:  # from the task's state, not the weights: checkpoints keep their keys
            counts = torch.tensor(word_counts, dtype=torch.float)
            counts[PAD_ID] = 0
            if counts.numel() != vocab_size or counts.sum() <= 0:
                raise ValueError(f"word_counts: {counts.numel()} counts (summing to {counts.sum():g}) for a "
                                 f"vocabulary of {vocab_size}")
            frequencies = counts / counts.sum()
        self.word_frequencies: Tensor | None
        self.register_buffer("word_frequencies", frequencies, persistent=False)
        self.backbone: GRUBackbone = backbone(input_size=embed_size, bidirectional=bidirectional)
        self.pool = AttentionPool(self.backbone.output_size) if pooling == "attention" else MaxMeanPool(
            self.backbone.output_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.pool.output_size, classes)
        self.register_buffer("temperature", torch.ones(()))
        self.lm_words = lm_words
        directions = 2 if bidirectional else 1
        self.lm_heads = nn.ModuleList(nn.Linear(self.backbone.hidden_size, lm_words) for _ in range(directions)
                                      ) if lm_words else None

    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.classify(self.embed(ids), lengths)

    def embed(self, ids: Tensor) -> Tensor:
        """Token embeddings (B, T, E); in training each real token is read as the unknown token with
        probability `word_dropout`, so the model learns not to lean on single words and the unknown token
        (every word missing from the training texts) gets a trained embedding."""
        if self.training and self.word_dropout:
            dropped = (torch.rand(ids.shape, device=ids.device) < self.word_dropout) & (ids != PAD_ID)
            ids = ids.masked_fill(dropped, UNK_ID)
        return self.lookup(ids)

    def lookup(self, ids: Tensor) -> Tensor:
        """Token embeddings (B, T, E), standardised where the model has word frequencies: each dimension of the
        table has mean 0 and variance 1 over the vocabulary weighted by how often each word occurs in training
        (Miyato et al. 2017), so the embeddings cannot grow until adversarial training's fixed `eps` no longer
        moves them. The statistics are taken without gradient (through them every step's gradient would fill the
        whole table, at about eight times the cost of the embedding's own backward pass)."""
        rows = self.embedding(ids)
        if self.word_frequencies is None:
            return rows
        with torch.no_grad(), torch.autocast(rows.device.type, enabled=False):  # in float32 under mixed precision
            table, frequencies = self.embedding.weight.float(), self.word_frequencies.float()
            mean = frequencies @ table
            scale = torch.rsqrt(frequencies @ (table - mean).square() + 1e-6)
        return (rows - mean.to(rows.dtype)) * scale.to(rows.dtype)

    def states(self, embedded: Tensor, lengths: Tensor) -> Tensor:
        """Backbone outputs (B, T, output_size) for token embeddings (B, T, E)."""
        h, _ = self.backbone(self.dropout(embedded), lengths)
        return h

    def language_states(self, embedded: Tensor, lengths: Tensor, h: Tensor | None = None) -> Tensor:
        """The states `lm_loss` reads: the backbone's outputs (`h`, when already computed), but for a stack of
        bidirectional layers its first layer's (above it each direction has seen the other's side)."""
        if self.backbone.bidirectional and self.backbone.num_layers > 1:
            return self.backbone.first_layer(self.dropout(embedded), lengths)
        return self.states(embedded, lengths) if h is None else h

    def classify(self, embedded: Tensor, lengths: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits (B, C) and the pooling's token weights (B, T) from token embeddings (B, T, E)
        (or from their backbone outputs `h`, when already computed)."""
        h = self.states(embedded, lengths) if h is None else h
        pooled, weights = self.pool(h, valid_mask(lengths.to(embedded.device), embedded.size(1)))
        return self.head(self.dropout(pooled)), weights

    def lm_loss(self, h: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
        """Mean cross-entropy of predicting each next token from the forward states `h` (`language_states`)
        and each previous token from the backward ones (a bidirectional language model on the same pass);
        tokens outside the `lm_words` most frequent count as unknown."""
        assert self.lm_heads is not None, "lm_words=0: the model has no language-model heads"
        size = self.backbone.hidden_size
        targets = torch.where(ids < self.lm_words, ids, torch.full_like(ids, UNK_ID))
        follows = valid_mask(lengths.to(ids.device), ids.size(1))[:, 1:]  # steps t >= 1 of each text
        h = self.dropout(h)
        pairs = [(h[:, :-1, :size], targets[:, 1:])]  # forward state at t -> token t + 1
        if len(self.lm_heads) == 2:
            pairs.append((h[:, 1:, size:], targets[:, :-1]))  # backward state at t -> token t - 1
        losses = [F.cross_entropy(head(states).flatten(0, 1), target.masked_fill(~follows, PAD_ID).flatten(),
                                  ignore_index=PAD_ID)  # a mask, not a boolean index: no wait for the device
                  for head, (states, target) in zip(self.lm_heads, pairs)]
        return torch.stack(losses).mean()

    def probabilities(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Calibrated class probabilities (B, C) and the pooling's token weights (B, T)."""
        logits, weights = self(ids, lengths)
        return (logits / self.temperature).softmax(-1), weights

    def saliency(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Calibrated class probabilities (B, C) and each token's gradient x input toward the predicted label
        (B, T): positive where the token pushes toward the label, zero at padding.

        Runs with gradients even inside `torch.inference_mode` (Lightning's prediction loop), and
        without cuDNN, whose RNN backward exists only in training mode (this runs in eval mode).
        """
        with torch.inference_mode(False), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            embedded = self.lookup(ids.clone()).detach().requires_grad_()
            logits, _ = self.classify(embedded, lengths.clone())
            (grad,) = torch.autograd.grad(logits.max(-1).values.sum(), embedded)
        importance = (grad * embedded).sum(-1).detach() * valid_mask(lengths.to(ids.device), ids.size(1))
        return (logits.detach() / self.temperature).softmax(-1), importance


def fit_temperature(logits: Tensor, labels: Tensor, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on held-out `labels` (Guo et al. 2017); 1 (none)
    for logits that are not all finite (a diverged model's), on which the search would step by NaN, and where every
    held-out label is predicted right: the NLL then falls without end as T shrinks, so the texts give no temperature
    to fit (the search ran to the lower bound, and every probability was 0 or 1, unseen words' too)."""
    if not bool(torch.isfinite(logits).all()) or bool((logits.argmax(-1) == labels).all()):
        return 1.0
    with torch.inference_mode(False), torch.enable_grad():
        logits, labels = logits.detach().float().cpu().clone(), labels.detach().cpu().clone()
        log_t = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
        return float(log_t.detach().exp().clamp(*bounds))
