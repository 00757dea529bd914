"""The random number generators' states, as a checkpoint stores them for a resumed run."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """The states of torch's CPU (and, once used, CUDA) generators, numpy's global one and Python's, as bytes and
    plain values: a checkpoint loads them without unpickling objects, and DDP processes can exchange them."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {"torch": _bytes(torch.get_rng_state()), "python": random.getstate(),
                              "numpy": [kind, keys.tobytes(), position, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [_bytes(state) for state in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Set the generators to `states` (from `rng_states`); CUDA's only on as many devices as they were saved on."""
    torch.set_rng_state(_tensor(states["torch"]))
    random.setstate(_as_tuples(states["python"]))
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.frombuffer(keys, dtype=np.uint32), position, has_gauss, gauss))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_tensor(state) for state in cuda])


def _bytes(state: torch.Tensor) -> bytes:
    return state.numpy().tobytes()


def _tensor(state: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(state), dtype=torch.uint8)


def _as_tuples(value: Any) -> Any:
    """`random.setstate` wants the tuples `random.getstate` gave, which a checkpoint may have turned into lists."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value
