"""The sentiment model's training losses: class-weighted (and distilled) cross-entropy, adversarial and virtual
adversarial training, and the language model of pre-training."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from gru_suite.backbone import valid_mask
from gru_suite_plugins.sentiment.data import Batch
from gru_suite_plugins.sentiment.model import SentimentModel


def soft_cross_entropy(logits: Tensor, targets: Tensor, example_weights: Tensor) -> Tensor:
    """Cross-entropy of `logits` (B, C) against probabilities `targets` (B, C), the mean weighted by
    `example_weights` (B,)."""
    return (example_weights * -(targets * logits.log_softmax(-1)).sum(-1)).sum() / example_weights.sum()


def classification_loss(logits: Tensor, labels: Tensor, weights: Tensor, targets: Tensor | None = None,
                        share: float = 0.0) -> Tensor:
    """Class-weighted cross-entropy with `labels`; with soft `targets` (distillation), `1 - share` of it plus
    `share` x the cross-entropy with them, each text weighted by its label's weight."""
    hard = F.cross_entropy(logits, labels, weight=weights)
    if targets is None:
        return hard
    return (1 - share) * hard + share * soft_cross_entropy(logits, targets, weights[labels])


def adversarial_loss(model: SentimentModel, embedded: Tensor, lengths: Tensor, loss: Tensor, eps: float,
                     loss_of: Callable[[Tensor], Tensor]) -> Tensor:
    """`loss_of` the logits of each text's embeddings moved by `eps` (L2 norm over the whole text) in the direction
    that raises `loss` most (adversarial training, Miyato et al. 2017): the label must not hinge on a
    small change of the words' embeddings. The move is made before the model's dropout, and the moved copy
    draws its own dropout masks (moving the dropped-out embeddings, as Miyato et al.'s code does, made the
    SST-2 preset fail to learn at eps 5)."""
    (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)
    logits, _ = model.classify(embedded + eps * _unit(grad), lengths)  # grad carries no graph (no create_graph)
    return loss_of(logits)


def virtual_adversarial_loss(model: SentimentModel, embedded: Tensor, lengths: Tensor, logits: Tensor, eps: float,
                             probe: float = 0.1) -> Tensor:
    """The KL divergence from the model's probabilities `logits` (B, C) for the texts to those for their embeddings
    moved by `eps` (L2 norm over each text's tokens) in the direction that changes them most, found by one power
    iteration from a random move of norm `probe` (virtual adversarial training, Miyato et al. 2017: no labels
    needed; `probe` is their finite-difference step). Batch mean; the clean probabilities are the fixed target."""
    target = logits.detach().log_softmax(-1)
    tokens = valid_mask(lengths.to(embedded.device), embedded.size(1)).unsqueeze(-1)
    move = (probe * _unit(torch.randn_like(embedded) * tokens)).requires_grad_()
    moved, _ = model.classify(embedded.detach() + move, lengths)
    (grad,) = torch.autograd.grad(_kl(target, moved), move)
    moved, _ = model.classify(embedded + eps * _unit(grad), lengths)
    return _kl(target, moved)


def _unit(move: Tensor) -> Tensor:
    """`move` (B, T, E) scaled to norm 1 per text."""
    return F.normalize(move.flatten(1), dim=1).view_as(move)


def _kl(target: Tensor, logits: Tensor) -> Tensor:
    """Batch mean of KL(p || q), p given as log-probabilities `target`, q as `logits`."""
    return F.kl_div(logits.log_softmax(-1), target, reduction="batchmean", log_target=True)


def language_model_loss(model: SentimentModel, batch: Batch) -> Tensor:
    """The bidirectional language model's loss on a batch of texts (pre-training)."""
    return model.lm_loss(model.language_states(model.embed(batch.ids), batch.lengths), batch.ids, batch.lengths)
