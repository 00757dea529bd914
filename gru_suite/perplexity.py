"""Perplexity from a summed negative log-likelihood, for tasks that predict tokens or events."""

from __future__ import annotations

import math
import sys

LARGEST_EXPONENT = math.log(sys.float_info.max)
"""The largest mean NLL whose exponential is a float; above it the perplexity is infinite."""


def perplexity(nll: float, count: float) -> float:
    """exp(`nll` / `count`): the perplexity of `count` predictions whose negative log-likelihoods (in nats) sum to
    `nll`; infinite where that overflows (a diverged model's), NaN for a NaN `nll`."""
    mean = nll / count
    return math.inf if mean > LARGEST_EXPONENT else math.exp(mean)
