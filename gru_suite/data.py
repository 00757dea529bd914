"""Data plumbing shared by tasks: a DataModule over named datasets loaded in whole batches,
optionally in batches of similar length."""

from __future__ import annotations

import random
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from gru_suite.errors import UserError

T = TypeVar("T")


STAGE_SETS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
"""The datasets each of Lightning's stages reads."""


def saving_part_way(trainer: pl.Trainer) -> bool:
    """Whether a checkpoint saved now falls part-way through a training epoch, one process training: some of its
    batches trained, its end to come (validation every `trainer.val_check_interval`). An epoch that
    `trainer.max_time` cut short ends where it stopped: a checkpoint saved at that end is not part-way (one saved by
    the validation Lightning runs as it stops is, where checkpoints are saved at validation: `val_check_interval`
    other than 1.0, `check_val_every_n_epoch` above 1)."""
    if trainer.state.fn != TrainerFn.FITTING or trainer.world_size > 1:
        return False
    batches, epochs = trainer.fit_loop.epoch_loop.batch_progress, trainer.fit_loop.epoch_progress.current
    return not batches.is_last_batch and batches.current.completed > 0 and epochs.processed == epochs.completed


class SplitDataModule(pl.LightningDataModule):
    """Loaders for the datasets in `self.sets` ("train", "val", "test", "predict").

    Each loader gathers whole batches (the dataset's `__getitems__`, no per-item
    collation); training batches are shuffled. `batch_sizes` overrides `batch_size`
    per stage. A set missing from `self.sets` is made on first use by `build(stage)`,
    so prediction reads no training data. With `lengths` (item lengths of a set),
    batches hold items of similar length in every stage (`length_bucket_loader`, seeded by
    `seed`): validation, test and prediction batches in length order, not the dataset's.
    """

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        batch_sizes: Mapping[str, int] | None = None,
        build: Callable[[str], Dataset] | None = None,
        lengths: Callable[[Dataset], Sequence[int]] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.batch_sizes = dict(batch_sizes or {})
        self.build = build
        self.lengths = lengths
        self.seed = seed
        self.sets: dict[str, Dataset] = {}
        self._train_loader: DataLoader | None = None
        self._resume_position: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        """Lightning's hook: the stage's input is read here, before any model runs (for "fit", the training and
        validation sets)."""
        for name in STAGE_SETS.get(stage, ()) if self.build is not None else ():
            self.dataset(name)

    def dataset(self, stage: str) -> Dataset:
        if stage not in self.sets and self.build is not None:
            self.sets[stage] = self.build(stage)
        return self.sets[stage]

    def _loader(self, stage: str) -> DataLoader:
        dataset, size, shuffle = self.dataset(stage), self.batch_sizes.get(stage, self.batch_size), stage == "train"
        if self.lengths is not None:  # a resumed run starts at its epoch: worker processes draw before set_epoch
            epoch = self.trainer.fit_loop.epoch_progress.current.processed if shuffle and self.trainer else 0
            return length_bucket_loader(dataset, self.lengths(dataset), size, shuffle, self.seed, self.num_workers,
                                        epoch)
        return batch_loader(dataset, size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        loader = self._train_loader = self._loader("train")
        position, self._resume_position = self._resume_position, None
        trainer = self.trainer
        # the epochs processed, not `current_epoch`: a checkpoint saved where an epoch that `trainer.max_time` cut
        # short ended (by earlier versions, with a position) has processed that epoch already
        processed = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else None
        if position and position["epoch"] == processed and trainer.world_size == 1 and \
                resume_part_way(loader, position):
            rank_zero_info(f"resuming part-way through epoch {position['epoch']}: its first {position['batches']} "
                           "batches were trained, the others follow in their order")
            # Lightning's warning that the loader cannot resume part-way no longer holds (the filter is this run's:
            # `run.train` restores the warning filters after fitting)
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch when a checkpoint is saved part-way through one (validation every
        `trainer.val_check_interval`): the epoch, the batches trained, their size, the items and the seed of the
        epoch's order, so that a run resumed from it trains the epoch's other batches (`resume_part_way`; Lightning
        would start the epoch's rest afresh in a new order, training some items twice and others never). Empty at
        an epoch's end, and under DDP."""
        trainer, loader = self.trainer, self._train_loader
        # under DDP each process trains its own share, which a later run need not split alike
        if trainer is None or loader is None or not saving_part_way(trainer):
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress
        return {"train_position": {"epoch": trainer.current_epoch, "batches": progress.current.completed,
                                   "batch_size": _batch_size(loader), "items": len(loader.dataset),
                                   "order_seed": getattr(loader.sampler, "order_seed", None)}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = state_dict.get("train_position")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


class LengthBucketSampler(BatchSampler):
    """Batches of similar-length items, for packed sequences with little padding.

    Takes item indices in `sampler`'s order (shuffled or not), sorts them by
    length inside pools of `pool_batches` batches, and cuts the pools into
    batches; with `shuffle_batches` the batches are shuffled again (the
    fairseq/OpenNMT recipe). Without shuffling, one pool: batches in length order.
    It follows `BatchSampler`'s signature so that Lightning can swap in a
    `DistributedSampler` under DDP, each process bucketing its own share.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Iterable[int],
        batch_size: int,
        drop_last: bool = False,
        *,
        lengths: Sequence[int],
        shuffle_batches: bool = False,
        pool_batches: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = list(lengths)
        self.shuffle_batches = shuffle_batches
        self.pool_size = batch_size * pool_batches if shuffle_batches else None
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, torch.Tensor] | None = None

    def resume(self, skip: int, rng_state: torch.Tensor) -> None:
        """Leave out the next pass's first `skip` batches, and set torch's generator to `rng_state` as it starts
        (a run resumed part-way through an epoch)."""
        self._resume = (skip, rng_state)

    def __iter__(self) -> Iterator[list[int]]:
        # a generator, so the order is drawn at the first batch: Lightning makes the first epoch's iterator before it
        # calls `set_epoch`, which a resumed run needs first
        skip, rng_state = self._resume or (0, None)
        if rng_state is not None:
            torch.set_rng_state(rng_state)
            self._resume = None
        epoch = getattr(self.sampler, "epoch", self.epoch)  # a seeded or distributed sampler's, which Lightning sets
        order = list(self.sampler)
        size = self.pool_size or max(len(order), 1)
        batches = []
        for start in range(0, len(order), size):
            pool = sorted(order[start : start + size], key=self.lengths.__getitem__)
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        if self.shuffle_batches:
            random.Random(self.seed + epoch).shuffle(batches)
            self.epoch = epoch + 1
        yield from batches[skip:]

    def __len__(self) -> int:
        items = len(self.sampler)  # type: ignore[arg-type]
        size = self.pool_size or max(items, 1)
        pools = [min(size, items - start) for start in range(0, items, size)]
        if self.drop_last:
            return sum(pool // self.batch_size for pool in pools)
        return sum(-(-pool // self.batch_size) for pool in pools)


class ResumableRandomSampler(RandomSampler):
    """A `RandomSampler` (each epoch's order drawn as it draws it, number for number) that keeps the seed of its
    current order (`order_seed`), and whose next order can be one drawn before, from an item on (`resume`)."""

    def __init__(self, data_source: Sized) -> None:
        super().__init__(data_source)
        self.order_seed: int | None = None
        self._resume: tuple[int, int, torch.Tensor] | None = None

    def resume(self, order_seed: int, skip: int, rng_state: torch.Tensor) -> None:
        """Make the next order the one of `order_seed`, less its first `skip` items, and set torch's generator to
        `rng_state` as it starts (the loader's iterator draws from it first)."""
        self._resume = (order_seed, skip, rng_state)

    def __iter__(self) -> Iterator[int]:
        if self._resume is None:
            seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        else:
            (seed, skip, rng_state), self._resume = self._resume, None
            torch.set_rng_state(rng_state)
        self.order_seed = seed
        yield from torch.randperm(len(self.data_source), generator=torch.Generator().manual_seed(seed)).tolist()[skip:]


def resume_part_way(loader: DataLoader, position: Mapping[str, Any]) -> bool:
    """Make `loader`'s next pass (a training loader of `length_bucket_loader` or `batch_loader`) go on from
    `position` (`SplitDataModule.state_dict`'s: the batches of `batch_size` trained on `items` items, and a
    `batch_loader`'s order seed; a length-bucketed order is the epoch's own), with torch's generator as it is now
    once the pass starts (as it was when the checkpoint was saved: the pass's iterator draws from it first). False,
    changing nothing, where the items differ in number, a length-bucketed loader's batch size changed, a
    `batch_loader`'s grew (Lightning counts the batches trained, and would stop the epoch at the loader's length in
    batches of the new size: items left out; a smaller size ends the loader first), or its sampler is neither."""
    batches, batch_size = position["batches"], position.get("batch_size")
    if len(loader.dataset) != position.get("items") or batch_size is None:
        return False
    if isinstance(loader.batch_sampler, LengthBucketSampler) and loader.batch_sampler.batch_size == batch_size:
        loader.batch_sampler.resume(batches, torch.get_rng_state())
        return True
    if isinstance(loader.sampler, ResumableRandomSampler) and position.get("order_seed") is not None and \
            _batch_size(loader) <= batch_size:
        loader.sampler.resume(position["order_seed"], batches * batch_size, torch.get_rng_state())
        return True
    return False


def _batch_size(loader: DataLoader) -> int | None:
    """The items in each of `loader`'s batches (but the last)."""
    return loader.batch_size if loader.batch_size is not None else getattr(loader.batch_sampler, "batch_size", None)


class SeededRandomSampler(RandomSampler):
    """A `RandomSampler` drawing a new order every epoch from its own generator seeded with `seed`. `epoch` is the
    epoch of the next order, which `set_epoch` sets (Lightning calls it before each training epoch): the order of
    epoch `e` is the one a run started at epoch 0 draws `e`-th, so a run resumed from a checkpoint trains on the
    batches of the uninterrupted run."""

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source, generator=torch.Generator().manual_seed(seed))
        self.seed = seed
        self.epoch = 0
        self._drawn = 0  # orders drawn from the generator

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self._drawn != self.epoch:  # resumed (or sent back): draw again from the start
            self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):
                deque(super().__iter__(), maxlen=0)
        self.epoch = self._drawn = self.epoch + 1
        yield from super().__iter__()


def length_bucket_loader(
    dataset: Dataset, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
    epoch: int = 0,
) -> DataLoader:
    """A loader of length-bucketed batches; the dataset's `__getitems__` builds each whole batch.

    `shuffle` draws a new item order and batch order every epoch (seeded), starting with those of `epoch`; without
    it the batches come in length order, not the dataset's.
    """
    dataset = _batch_gathering(dataset)
    lengths = lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)  # a generator too
    if len(lengths) != len(dataset):
        raise UserError(f"{len(lengths)} item lengths for a dataset of {len(dataset)} items "
                        f"({type(dataset).__name__}): the lengths (SplitDataModule(lengths=...)) must give one "
                        "per item")
    order = SeededRandomSampler(dataset, seed) if shuffle else SequentialSampler(dataset)
    if shuffle:
        order.set_epoch(epoch)
    sampler = LengthBucketSampler(order, batch_size, lengths=lengths, shuffle_batches=shuffle, seed=seed)
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=_whole_batch, num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def batch_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0) -> DataLoader:
    """A DataLoader over a dataset with `__getitems__`: whole batches, no per-item collation; shuffled, by a
    `ResumableRandomSampler`."""
    return DataLoader(
        _batch_gathering(dataset),
        batch_size=batch_size,
        sampler=ResumableRandomSampler(dataset) if shuffle else None,
        num_workers=num_workers,
        collate_fn=_whole_batch,
        persistent_workers=num_workers > 0,
    )


def _batch_gathering(dataset: Dataset) -> Dataset:
    """`dataset`, checked to gather a whole batch (`__getitems__`), which these loaders hand on as it is: without
    it a task's `step` would get a list of single items."""
    if not callable(getattr(dataset, "__getitems__", None)):
        raise UserError(f"{type(dataset).__name__} has no __getitems__(indices): the suite's loaders hand a task whole "
                        "batches, each gathered by its dataset in one call (see gru_suite.data.batch_loader)")
    return dataset


def _whole_batch(batch: T) -> T:
    return batch
