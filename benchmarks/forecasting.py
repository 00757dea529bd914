#!/usr/bin/env python
"""Forecasting benchmarks for GRU Suite (CPU).

Sections (``--sections``, comma-separated):

speed   Training seconds per epoch of the suite (``experiment=seed_keras_example``
        built through ``gru_suite.run``; logger, checkpointing, validation and
        progress bar off) against a hand-written PyTorch loop over the identical
        pre-windowed train split, the identical model (``nn.GRU(1, 50)`` +
        ``nn.Linear(50, 1)``, lookback 10), Adam 1e-3, MSE, batch 32.
steps   Where a step's time goes, timed outside any training loop on the speed
        section's work: gathering a batch (the suite's loader, the plain loop's
        DataLoader with its per-item collation) and one optimisation step
        (forward, loss, backward, Adam) of the suite's model and of the plain one;
        what a loop's ms/step adds to them is its own machinery.
cells   GRU vs LSTM backbones at the same hidden size: parameter counts and
        training seconds per epoch, on the seed_keras_example work and on a
        larger one (hidden 128, lookback 96).
etth1   ``experiment=etth1`` on ETTh1 (only with ``--etth1 PATH``): fit, test the
        best checkpoint (by val/loss), report scaled test MSE/MAE beside the
        naive and seasonal-naive baselines of the same test run.

Every section prints a table; the last line of stdout is one JSON object with
all figures, so ``python benchmarks/forecasting.py | tail -1 | python -m json.tool``
works. Lightning's chatter goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, the folder is sys.path[0] already; imported otherwise, it is not
    sys.path.insert(0, str(HERE))

from _common import fit_and_test, make_clock, positive_int, quiet, quote, table  # noqa: E402

REPO = HERE.parent
DEFAULT_SERIES = REPO / "data" / "forecasting" / "demo_load.csv"
SECTIONS = ("speed", "steps", "cells", "etth1")
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"

DEFAULT_ETTH1_OVERRIDES = ""  # experiment/etth1.yaml as it is (its batch of 128 was chosen on val/loss)

# Work sizes of the cells section: (name, overrides on top of experiment=seed_keras_example).
CELL_WORKLOADS: list[tuple[str, list[str]]] = [
    ("seed_keras (h50, L10)", []),
    ("large (h128, L96)", ["backbone.hidden_size=128", "task.data.lookback=96"]),
]


# --------------------------------------------------------------------------- helpers


def _time_column(path: Path, wanted: str | None, column: str) -> str | None:
    """`wanted`, else the CSV's first column when it is not numeric (a date), else None."""
    import pandas as pd

    from gru_suite.errors import UserError

    if not path.is_file():
        raise UserError(f"series file not found: {path}")
    head = pd.read_csv(path, nrows=20)
    if column not in head.columns:
        raise UserError(f"{path} has no column {column!r}; columns are {list(head.columns)}")
    if wanted:
        return wanted
    first = head.columns[0]
    if first != column and not pd.api.types.is_numeric_dtype(head[first]):
        return str(first)
    return None


def _med(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- suite / plain runs


def suite_fit(cfg: Any, epochs: int, seed: int) -> dict[str, Any]:
    """Train the suite for 1 warm-up + `epochs` epochs, training only; per-epoch times."""
    import pytorch_lightning as pl

    from gru_suite import run
    from gru_suite.callbacks import EpochThroughput

    pl.seed_everything(seed, verbose=False)
    task = run.build_task(cfg.task)
    datamodule = task.datamodule()
    module = run.build_module(cfg, task)
    clock = make_clock()
    trainer = run.build_trainer(
        cfg,
        callbacks=[EpochThroughput(), clock],  # the suite's own default throughput callback stays on
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        max_epochs=epochs + 1,
        min_epochs=epochs + 1,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_wall = time.perf_counter() - start
    loss = trainer.callback_metrics.get("train/loss")  # the epoch's mean (TaskModule)
    return {
        "wall": clock.wall[1:],
        "cpu": clock.cpu[1:],
        "throughput": clock.throughput[1:],
        "fit_wall": fit_wall,
        "train_loss": float(loss) if loss is not None else float("nan"),
        "params": _count(module.model),
        "backbone_params": _count(module.model.backbone),
        "windows": len(datamodule.sets["train"]),
        "batches": len(datamodule.train_dataloader()),
    }


def train_windows(cfg: Any) -> tuple[Any, Any]:
    """The suite's own train windows, materialised: X (N, lookback, F), Y (N, horizon * targets)."""
    from gru_suite import run

    task = run.build_task(cfg.task)
    train = task.datamodule().sets["train"]
    x, y, _ = train.__getitems__(list(range(len(train))))
    return x.contiguous(), y.reshape(len(y), -1).contiguous()


def plain_model(x: Any, y: Any, hidden: int) -> Any:
    """The class of the hand-written model: GRU + Linear on the last hidden state."""
    import torch
    from torch import nn

    class PlainGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(x.size(-1), hidden, batch_first=True)
            self.fc = nn.Linear(hidden, y.size(-1))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            _, h_n = self.gru(inputs)
            return self.fc(h_n[-1])

    return PlainGRU


def floor_fit(x: Any, y: Any, hidden: int, lr: float, batch_size: int, epochs: int, seed: int,
              manual: bool = False) -> dict[str, Any]:
    """Lightning's own floor: the hand-written model in a minimal LightningModule (fused Adam, MSE), trained by a
    `Trainer(barebones=True)` on batches gathered by one index each (no collation): no suite code at all.
    `manual`: Lightning's manual optimisation, the step written in `training_step` (no closure, no
    optimiser-step hooks; gradient clipping, accumulation and scheduler steps would be the module's own work)."""
    import pytorch_lightning as pl
    import torch
    from torch.nn.functional import mse_loss

    class Floor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = plain_model(x, y, hidden)()
            self.automatic_optimization = not manual

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor | None:
            loss = mse_loss(self.model(batch[0]), batch[1])
            if not manual:
                return loss
            optimizer = self.optimizers(use_pl_optimizer=False)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return None

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=lr, fused=True)

    class Batches:
        def __len__(self) -> int:
            return math.ceil(len(x) / batch_size)

        def __iter__(self) -> Any:
            order = torch.randperm(len(x))
            return ((x[i], y[i]) for i in order.split(batch_size))

    pl.seed_everything(seed, verbose=False)
    clock = make_clock()
    trainer = pl.Trainer(barebones=True, accelerator="cpu", max_epochs=epochs + 1, callbacks=[clock])
    os.environ.pop(NVML_CHECK, None)  # as the suite does on CPU
    module = Floor()
    trainer.fit(module, train_dataloaders=Batches())
    return {"wall": clock.wall[1:], "cpu": clock.cpu[1:], "weights": module.model.state_dict()}


def plain_fit(x: Any, y: Any, hidden: int, lr: float, batch_size: int, epochs: int, seed: int) -> dict[str, Any]:
    """The hand-written loop: GRU + Linear, Adam, MSE, TensorDataset + shuffling DataLoader."""
    PlainGRU = plain_model(x, y, hidden)
    # Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 for the whole process, which makes
    # every Adam.step() on a machine without CUDA try to dlopen NVML (~0.1 ms). A stand-alone
    # PyTorch script would not pay that, so the plain loop runs without it (restored afterwards).
    saved = os.environ.pop(NVML_CHECK, None)
    try:
        return _plain_loop(PlainGRU, x, y, lr, batch_size, epochs, seed)
    finally:
        if saved is not None:
            os.environ[NVML_CHECK] = saved


def _plain_loop(model_cls: Callable, x: Any, y: Any, lr: float, batch_size: int, epochs: int, seed: int) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    model = model_cls()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    wall, cpu, loss_sum, seen = [], [], torch.zeros(()), 0
    start = time.perf_counter()
    for _ in range(epochs + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        loss_sum, seen = torch.zeros(()), 0
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(xb)
            seen += len(xb)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {
        "wall": wall[1:],
        "cpu": cpu[1:],
        "fit_wall": time.perf_counter() - start,
        "train_loss": float(loss_sum / max(seen, 1)),
        "params": _count(model),
    }


# --------------------------------------------------------------------------- sections


def _series_overrides(args: argparse.Namespace) -> list[str]:
    series = Path(args.series).resolve()
    time_col = _time_column(series, args.time_column, args.column)
    return [
        f"task.data.path={quote(series)}",
        f"task.data.targets=[{quote(args.column)}]",
        f"task.data.time_column={quote(time_col) if time_col else 'null'}",
        "trainer.accelerator=cpu",
        "logger=none",
        "callbacks=none",
    ]


def timing_seed(args: argparse.Namespace) -> int:
    """The seed of the speed, steps and cells sections: `--seed`, else 0."""
    return 0 if args.seed is None else args.seed


def section_speed(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from gru_suite import run
    from gru_suite.testing import compose_train_config

    extra = shlex.split(args.speed_overrides)
    cfg = compose_train_config(
        "forecasting", ["experiment=seed_keras_example", *_series_overrides(args), *extra], tmp / "speed"
    )
    run.check_train_settings(cfg)  # its numbers are read here, before the suite's own training checks them
    x, y = train_windows(cfg)
    hidden, lr, batch = int(cfg.backbone.hidden_size), float(cfg.optimizer.lr), int(cfg.task.data.batch_size)
    suite_runs, plain_runs, floor_runs, manual_runs = [], [], [], []
    seed = timing_seed(args)
    for rep in range(args.repeats):  # alternate the order so drift and neighbours hit both alike
        order: list[tuple[list, Callable[[], dict]]] = [
            (suite_runs, lambda: suite_fit(cfg, args.epochs, seed + rep)),
            (plain_runs, lambda: plain_fit(x, y, hidden, lr, batch, args.epochs, seed + rep)),
            (floor_runs, lambda: floor_fit(x, y, hidden, lr, batch, args.epochs, seed + rep)),
            (manual_runs, lambda: floor_fit(x, y, hidden, lr, batch, args.epochs, seed + rep, manual=True)),
        ]
        for store, fn in order if rep % 2 == 0 else order[::-1]:
            store.append(fn())
    flat = lambda runs, key: [v for r in runs for v in r[key]]  # noqa: E731
    s_wall, p_wall = flat(suite_runs, "wall"), flat(plain_runs, "wall")
    s_cpu, p_cpu = flat(suite_runs, "cpu"), flat(plain_runs, "cpu")
    result = {
        "series": str(Path(args.series).resolve()),
        "column": args.column,
        "train_windows": int(x.size(0)),
        "lookback": int(x.size(1)),
        "batches_per_epoch": suite_runs[0]["batches"],
        "epochs_timed": args.epochs,
        "repeats": args.repeats,
        "threads": args.threads,
        "overrides": extra,
        "hidden_size": hidden,
        "suite_s_per_epoch": _med(s_wall),
        "plain_s_per_epoch": _med(p_wall),
        "ratio_suite_over_plain": _med(s_wall) / _med(p_wall),
        "suite_s_per_epoch_min": min(s_wall),
        "plain_s_per_epoch_min": min(p_wall),
        "ratio_min": min(s_wall) / min(p_wall),
        "suite_cpu_s_per_epoch": _med(s_cpu),
        "plain_cpu_s_per_epoch": _med(p_cpu),
        "ratio_cpu": _med(s_cpu) / _med(p_cpu),
        "suite_epoch_time_s_logged": _med(flat(suite_runs, "throughput")),
        "suite_fit_s_per_epoch_all_in": _med([r["fit_wall"] / (args.epochs + 1) for r in suite_runs]),
        "plain_fit_s_per_epoch_all_in": _med([r["fit_wall"] / (args.epochs + 1) for r in plain_runs]),
        "suite_ms_per_step": 1e3 * _med(s_wall) / suite_runs[0]["batches"],
        "plain_ms_per_step": 1e3 * _med(p_wall) / suite_runs[0]["batches"],
        "suite_params": suite_runs[0]["params"],
        "plain_params": plain_runs[0]["params"],
        "floor_s_per_epoch": _med(flat(floor_runs, "wall")),
        "floor_s_per_epoch_min": min(flat(floor_runs, "wall")),
        "floor_cpu_s_per_epoch": _med(flat(floor_runs, "cpu")),
        "floor_ms_per_step": 1e3 * _med(flat(floor_runs, "wall")) / suite_runs[0]["batches"],
        "ratio_floor_over_plain": _med(flat(floor_runs, "wall")) / _med(p_wall),
        "manual_floor_s_per_epoch": _med(flat(manual_runs, "wall")),
        "manual_floor_ms_per_step": 1e3 * _med(flat(manual_runs, "wall")) / suite_runs[0]["batches"],
        "ratio_manual_floor_over_plain": _med(flat(manual_runs, "wall")) / _med(p_wall),
        "suite_final_train_loss": _med([r["train_loss"] for r in suite_runs]),
        "plain_final_train_loss": _med([r["train_loss"] for r in plain_runs]),
    }
    table(
        f"speed: seed_keras_example{' ' + ' '.join(extra) if extra else ''} on {Path(args.series).name}[{args.column}]"
        f" - hidden {hidden}, lookback {result['lookback']}, {result['train_windows']} windows, "
        f"{result['batches_per_epoch']} batches/epoch, {args.epochs} timed epochs x {args.repeats} repeats, "
        f"{args.threads} thread(s)",
        ["loop", "s/epoch (median)", "s/epoch (min)", "CPU s/epoch", "ms/step", "params", "final train MSE"],
        [
            ["suite (Lightning)", result["suite_s_per_epoch"], result["suite_s_per_epoch_min"],
             result["suite_cpu_s_per_epoch"], result["suite_ms_per_step"], result["suite_params"],
             result["suite_final_train_loss"]],
            ["plain PyTorch", result["plain_s_per_epoch"], result["plain_s_per_epoch_min"],
             result["plain_cpu_s_per_epoch"], result["plain_ms_per_step"], result["plain_params"],
             result["plain_final_train_loss"]],
            ["ratio suite/plain", result["ratio_suite_over_plain"], result["ratio_min"], result["ratio_cpu"],
             "", "", ""],
            ["Lightning floor (barebones)", result["floor_s_per_epoch"], result["floor_s_per_epoch_min"],
             result["floor_cpu_s_per_epoch"], result["floor_ms_per_step"], result["plain_params"], ""],
            ["ratio floor/plain", result["ratio_floor_over_plain"], "", "", "", "", ""],
            ["Lightning floor, manual optimisation", result["manual_floor_s_per_epoch"],
             min(flat(manual_runs, "wall")), _med(flat(manual_runs, "cpu")), result["manual_floor_ms_per_step"],
             result["plain_params"], ""],
            ["ratio manual floor/plain", result["ratio_manual_floor_over_plain"], "", "", "", "", ""],
        ],
    )
    print(
        f"suite train/epoch_time_s (EpochThroughput, median) {result['suite_epoch_time_s_logged']:.4g} s; "
        f"whole fit / epochs incl. setup: suite {result['suite_fit_s_per_epoch_all_in']:.4g} s, "
        f"plain {result['plain_fit_s_per_epoch_all_in']:.4g} s\n"
        f"(the plain loop runs as a stand-alone script would, without the {NVML_CHECK}=1 that importing "
        "Lightning sets; equal final train MSE = identical work)"
    )
    return result


def _ms_per_step(epoch: Callable[[], int], times: int) -> float:
    """Median milliseconds per step of `epoch` (which runs some steps and returns how many), over `times` runs after
    one untimed."""
    epoch()
    runs = []
    for _ in range(times):
        start = time.perf_counter()
        steps = epoch()
        runs.append(1e3 * (time.perf_counter() - start) / steps)
    return _med(runs)


def _optimisation_steps(model: Any, loss_of: Callable, batches: list, fused: bool | None) -> Callable[[], int]:
    """An epoch of optimisation steps of `model` on `batches` (zero the gradients, forward and loss, backward,
    Adam at 1e-3), as a callable that returns its number of steps."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)

    def epoch() -> int:
        for batch in batches:
            optimizer.zero_grad()
            loss_of(model, batch).backward()
            optimizer.step()
        return len(batches)

    return epoch


def section_steps(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch
    from torch.nn.functional import mse_loss
    from torch.utils.data import DataLoader, TensorDataset

    from gru_suite import run
    from gru_suite.testing import compose_train_config

    cfg = compose_train_config("forecasting", ["experiment=seed_keras_example", *_series_overrides(args),
                                               *shlex.split(args.speed_overrides)], tmp / "steps")
    run.check_train_settings(cfg)
    torch.manual_seed(timing_seed(args))
    task = run.build_task(cfg.task)
    loader = task.datamodule().train_dataloader()
    suite_model = run.build_module(cfg, task).model
    x, y = train_windows(cfg)
    plain = plain_model(x, y, int(cfg.backbone.hidden_size))()
    batch_size = int(cfg.task.data.batch_size)
    collated = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    batches = list(loader)
    times = args.epochs * args.repeats
    saved = os.environ.pop(NVML_CHECK, None)  # as the suite on CPU and a stand-alone script run: no NVML probe
    try:
        result = {
            "suite_batches_ms": _ms_per_step(lambda: sum(1 for _ in loader), times),
            "collated_batches_ms": _ms_per_step(lambda: sum(1 for _ in collated), times),
            "suite_step_fused_ms": _ms_per_step(_optimisation_steps(
                suite_model, lambda model, batch: task.step(model, batch, "train").loss, batches, True), times),
            "plain_step_fused_ms": _ms_per_step(_optimisation_steps(
                plain, lambda model, batch: mse_loss(model(batch[0]), batch[1].flatten(1)), batches, True), times),
            "plain_step_unfused_ms": _ms_per_step(_optimisation_steps(
                plain, lambda model, batch: mse_loss(model(batch[0]), batch[1].flatten(1)), batches, None), times),
        }
    finally:
        if saved is not None:
            os.environ[NVML_CHECK] = saved
    result |= {"batches_per_epoch": len(batches), "timed_epochs": times}
    table(
        f"steps: where a step's time goes on the speed section's work ({len(batches)} batches/epoch, median of {times} "
        f"epochs, {args.threads} thread(s)), outside any training loop",
        ["part of a step", "ms/step"],
        [
            ["a batch: the suite's loader (one gather a batch)", result["suite_batches_ms"]],
            ["a batch: DataLoader over a TensorDataset (per-item collation, the plain loop's)",
             result["collated_batches_ms"]],
            ["optimisation: the suite's model and loss, fused Adam (the suite's)", result["suite_step_fused_ms"]],
            ["optimisation: the plain model, fused Adam", result["plain_step_fused_ms"]],
            ["optimisation: the plain model, Adam as the plain loop makes it", result["plain_step_unfused_ms"]],
        ],
    )
    print("a loop's ms/step (speed section) less its batch and its optimisation step here: its own machinery")
    return result


def section_cells(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from gru_suite.testing import compose_train_config

    base = ["experiment=seed_keras_example", *_series_overrides(args)]
    rows, out = [], {}
    for name, extra in CELL_WORKLOADS:
        runs: dict[str, list[dict]] = {"gru": [], "lstm": []}
        cfgs = {
            cell: compose_train_config("forecasting", [*base, f"backbone={cell}", *extra], tmp / f"cells_{cell}")
            for cell in runs
        }
        for rep in range(args.repeats):
            for cell in ("gru", "lstm") if rep % 2 == 0 else ("lstm", "gru"):
                runs[cell].append(suite_fit(cfgs[cell], args.epochs, timing_seed(args) + rep))
        entry = {}
        for cell, cell_runs in runs.items():
            wall = [v for r in cell_runs for v in r["wall"]]
            entry[cell] = {
                "hidden_size": int(cfgs[cell].backbone.hidden_size),
                "lookback": int(cfgs[cell].task.data.lookback),
                "backbone_params": cell_runs[0]["backbone_params"],
                "params": cell_runs[0]["params"],
                "s_per_epoch": _med(wall),
                "s_per_epoch_min": min(wall),
                "final_train_loss": _med([r["train_loss"] for r in cell_runs]),
            }
        entry["lstm_over_gru_time"] = entry["lstm"]["s_per_epoch"] / entry["gru"]["s_per_epoch"]
        entry["lstm_over_gru_params"] = entry["lstm"]["backbone_params"] / entry["gru"]["backbone_params"]
        out[name] = entry
        for cell in ("gru", "lstm"):
            e = entry[cell]
            rows.append([name, cell, e["hidden_size"], e["lookback"], e["backbone_params"], e["params"],
                         e["s_per_epoch"], e["s_per_epoch_min"], e["final_train_loss"]])
        rows.append([name, "lstm/gru", "", "", entry["lstm_over_gru_params"], "", entry["lstm_over_gru_time"], "", ""])
    table(
        f"cells: GRU vs LSTM backbone, CPU, {args.epochs} timed epochs x {args.repeats} repeats, "
        f"{args.threads} thread(s)",
        ["work", "cell", "hidden", "lookback", "backbone params", "model params", "s/epoch (median)",
         "s/epoch (min)", "final train MSE"],
        rows,
    )
    return out


def per_step_split(path: Path, overrides: list[str]) -> list[str]:
    """The standard 12/4/4-month split and the daily season in rows of `path`'s time step, where it is not hourly
    (ETTm1/ETTm2: 15 minutes) and `overrides` do not set them; the preset's rows are hours. The time column is the
    preset's, `date`, or the one `task.data.time_column=` names in `overrides`, read as their `task.data.time_unit=`
    or `task.data.time_format=` say, as the task reads it."""
    import pandas as pd

    from gru_suite.timeseries import parse_timestamp

    given = {key: value for key, _, value in (o.partition("=") for o in overrides)}  # the last one of a key wins
    column = given.get("task.data.time_column", "date")
    try:
        cells = pd.read_csv(path, usecols=[column], nrows=2, dtype=str)[column]
    except (OSError, ValueError):  # no such file or column: the task's own reading names it
        return []
    stamps = [parse_timestamp(cell, given.get("task.data.time_unit"), given.get("task.data.time_format"))
              for cell in cells]
    if len(stamps) < 2 or pd.NaT in stamps:  # no dates: the task's own reading names them
        return []
    step = stamps[1] - stamps[0]
    per_hour = pd.Timedelta(hours=1) / step if step > pd.Timedelta(0) else 1.0
    if per_hour <= 1 or not float(per_hour).is_integer():
        return []
    rows = int(per_hour)
    standard = {"task.data.split": f"[{8640 * rows},{2880 * rows},{2880 * rows}]", "task.data.season": f"{24 * rows}"}
    added = [f"{key}={value}" for key, value in standard.items()
             if not any(o.startswith(f"{key}=") for o in overrides)]
    print(f"note: {path.name} has {rows} rows an hour: {' '.join(added)}", file=sys.stderr)
    return added


SEGRNN_LOOKBACK_96 = {"etth1": (0.368, 0.395)}
"""SegRNN's published test MSE and MAE at lookback 96, horizon 96, by data file (../shared/DESIGN.md)."""


def segrnn_reference(path: Path, lookback: int, horizon: int) -> tuple[float, float] | None:
    """SegRNN's published test (MSE, MAE) on the file `path` at this lookback and horizon, where one is known: the
    reference row is not shown beside another file's figures (ETTm1, ETTh2, a user's series)."""
    return SEGRNN_LOOKBACK_96.get(path.stem.lower()) if lookback == horizon == 96 else None


def section_etth1(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    from gru_suite.testing import compose_train_config

    extra = shlex.split(args.etth1_overrides)
    path = Path(args.etth1).resolve()
    extra = [*per_step_split(path, extra), *extra]
    cfg = compose_train_config(
        "forecasting",
        [
            "experiment=etth1",
            "trainer.accelerator=auto",  # compose_train_config pins the CPU; this section keeps the yaml's device
            f"task.data.path={quote(path)}",
            "logger=none",
            "callbacks.progress_bar=null",
            "predict_after_training=false",
            *([] if args.seed is None else [f"seed={args.seed}"]),
            *extra,
        ],
        tmp / "etth1",
    )
    if args.etth1_threads:
        torch.set_num_threads(args.etth1_threads)
    fitted = fit_and_test(cfg, cfg.seed)
    reference = segrnn_reference(path, int(cfg.task.data.lookback), int(cfg.task.data.horizon))
    trainer, module, datamodule, clock = fitted.trainer, fitted.module, fitted.datamodule, fitted.clock
    metrics, best_epoch = fitted.test_metrics, fitted.best_epoch
    fit_wall, test_wall = fitted.fit_wall_s, fitted.test_wall_s
    result = {
        "path": str(path),
        "overrides": extra,
        "seed": int(cfg.seed),
        "threads": torch.get_num_threads(),
        "accelerator": type(trainer.accelerator).__name__,
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": best_epoch,
        "best_val_loss": fitted.best_val_loss,
        "val_loss_per_epoch": clock.val_loss,
        "train_s_per_epoch": _med(clock.wall),
        "train_s_total": float(sum(clock.wall)),
        "fit_wall_s": fit_wall,
        "test_wall_s": test_wall,
        "params": _count(module.model),
        "train_windows": len(datamodule.sets["train"]),
        "val_windows": len(datamodule.sets["val"]),
        "test_windows": len(datamodule.sets["test"]),
        "test_mse": metrics.get("test/mse"),
        "test_mae": metrics.get("test/mae"),
        "naive_mse": metrics.get("test/naive_mse"),
        "naive_mae": metrics.get("test/naive_mae"),
        "seasonal_naive_mse": metrics.get("test/seasonal_naive_mse"),
        "seasonal_naive_mae": metrics.get("test/seasonal_naive_mae"),
        "test_mse_original": metrics.get("test/mse_original"),
        "test_mae_original": metrics.get("test/mae_original"),
        "reference_segrnn_mse": reference[0] if reference else None,  # only for the file the figures are of
        "reference_segrnn_mae": reference[1] if reference else None,
        "test_metrics": metrics,
    }
    d = cfg.task.data
    m = cfg.task.model
    table(
        f"etth1 section on {path.name}: lookback {d.lookback}, horizon {d.horizon}, split {list(d.split)}, "
        f"segment {m.segment_length}, seed {cfg.seed}, "
        f"embed {m.embed_size}, hidden {cfg.backbone.hidden_size}, {result['epochs_run']} epochs "
        f"(best: {'?' if best_epoch is None else f'epoch {best_epoch}, from 0'}), {result['threads']} thread(s); "
        f"test windows {result['test_windows']}",
        ["model (test, scaled)", "MSE", "MAE"],
        [
            ["GRU suite (best val ckpt)", result["test_mse"], result["test_mae"]],
            ["naive (last value)", result["naive_mse"], result["naive_mae"]],
            [f"seasonal naive ({d.season})", result["seasonal_naive_mse"], result["seasonal_naive_mae"]],
            *([["SegRNN reference (L=96)", *reference]] if reference else []),
        ],
    )
    print(
        f"training {result['train_s_per_epoch']:.4g} s/epoch (median, validation excluded), "
        f"fit {fit_wall:.1f} s wall, test {test_wall:.1f} s; best val/loss {result['best_val_loss']}; "
        f"params {result['params']:,}; overrides: {' '.join(extra) or '(none)'}"
    )
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", default=str(DEFAULT_SERIES),
                        help="univariate CSV for the speed and cells sections (default: bundled demo_load.csv)")
    parser.add_argument("--column", default="load", help="column of --series to forecast (default: load)")
    parser.add_argument("--time-column", default=None,
                        help="time column of --series (default: its first column when that is not numeric)")
    parser.add_argument("--speed-overrides", default="",
                        help="extra Hydra overrides for the speed section (default: none, the seed_keras_example "
                             "work), e.g. 'backbone.hidden_size=128 task.data.lookback=96'; the plain loop (always GRU "
                             "+ Linear) follows hidden size, lookback and horizon")
    parser.add_argument("--etth1", default=None, help="path to ETTh1.csv; the etth1 section runs only when given")
    parser.add_argument("--etth1-overrides", default=DEFAULT_ETTH1_OVERRIDES,
                        help="Hydra overrides on top of experiment=etth1, one string "
                             f"(default: {DEFAULT_ETTH1_OVERRIDES!r}; pass '' for the yaml as it is)")
    parser.add_argument("--etth1-threads", type=positive_int, default=os.cpu_count() or 1,
                        help="torch threads for the etth1 section (default: all cores)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per run, after one untimed warm-up epoch")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loop in speed/cells, alternating order")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch.set_num_threads for speed, steps and cells (default 1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of speed, steps and cells (default 0) and of etth1 (default: the preset's, 42)")
    parser.add_argument("--out-dir", default=None,
                        help="keep run folders (etth1 checkpoints) here; default: a temporary folder, removed")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import pytorch_lightning as pl  # its import sets its loggers to INFO: quieten afterwards
    import torch

    from gru_suite.errors import UserError

    quiet()

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "meta": {
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "argv": sys.argv[1:] if argv is None else list(argv),
        }
    }
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gru_suite_bench_") as scratch:
        tmp = Path(args.out_dir).resolve() if args.out_dir else Path(scratch)
        for section in args.sections:
            if section == "etth1" and not args.etth1:
                print("\n== etth1: skipped (give --etth1 PATH/TO/ETTh1.csv)")
                continue
            torch.set_num_threads(args.threads)
            start = time.perf_counter()
            run_section = {"speed": section_speed, "steps": section_steps, "cells": section_cells,
                           "etth1": section_etth1}[section]
            try:
                report[section] = run_section(args, tmp)
            except UserError as err:  # a bad path or config: one line, as the CLI does
                print(f"error: {section}: {err}", file=sys.stderr)
                return 2
            walls[section] = time.perf_counter() - start
            print(f"[{section} section: {walls[section]:.1f} s wall]")
    report["meta"]["section_wall_s"] = walls
    print(json.dumps(report, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
