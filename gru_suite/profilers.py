"""A cheaper stand-in for Lightning's default profiler."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from pytorch_lightning.profilers import PassThroughProfiler

_NOTHING = nullcontext()


class QuietProfiler(PassThroughProfiler):
    """Lightning's default, which records nothing, without the cost of recording nothing: its `profile` builds a
    generator-based context manager around each of the ~60 hooks and loop stages of every training step (about
    0.1 ms of a tiny model's 2 ms step); this one hands back one shared no-op context. The trainer uses it unless
    `trainer.profiler` names a real one (`simple`, `advanced`, `pytorch`)."""

    def profile(self, action_name: str) -> AbstractContextManager:
        return _NOTHING
