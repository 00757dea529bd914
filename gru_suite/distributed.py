"""Helpers for multi-process (DDP) runs: task state that must see every process's share of the data, and
messages said once per run."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_only

Key = TypeVar("Key")
log = logging.getLogger("gru_suite")


@rank_zero_only
def warn_on_rank_zero(message: str) -> None:
    """Log a warning once per run, not once per DDP process."""
    log.warning(message)


def gather_dict(items: dict[Key, Any]) -> dict[Key, Any]:
    """Merge the dict each DDP process built over its share of the data, on every process.

    Keys that several processes hold (a sampler pads shares to equal length by
    repeating items) keep one value. Outside a multi-process run, `items` is returned.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    shares: list[dict[Key, Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, items)
    merged: dict[Key, Any] = {}
    for share in shares:
        merged.update(share or {})
    return merged


def gather_sums(*values: float) -> tuple[float, ...]:
    """Each value summed over every DDP process (the values themselves outside a multi-process run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    shares: list[tuple[float, ...] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, values)
    return tuple(sum(column) for column in zip(*(share or () for share in shares)))


def gather_objects(item: Any) -> list[Any]:
    """Every DDP process's `item`, in rank order, on every process (`[item]` outside a multi-process run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [item]
    items: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(items, item)
    return items
