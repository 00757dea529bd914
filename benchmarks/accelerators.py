"""Every installed task through the three CLI commands on a chosen device and precision.

    python benchmarks/accelerators.py                                  # gpu bf16-mixed vs cpu fp32
    python benchmarks/accelerators.py --setups gpu:bf16-mixed,gpu:32-true --epochs 5 --jobs 4

For each task and each `trainer:precision` setup, `gru-suite task=<task>` trains on the
task's bundled data for `--epochs` epochs (then tests its best checkpoint and writes its
artifacts, as every training run does). For the first setup, `gru-suite-eval` and
`gru-suite-predict` then restore `last.ckpt` on the same device, so checkpoint loading is
checked there too. It reports per run: exit status, wall seconds (Python start and imports
included), the suite's logged seconds per epoch and samples/s, the final train and
validation loss, the test loss, and how many artifacts were written. It is the check that
`trainer=gpu trainer.precision=bf16-mixed` works for every task, not a speed contest: the
bundled data sets are small. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import clean, positive_int, table  # noqa: E402

REPORTED = ("train/epoch_time_s", "train/samples_per_s", "train/loss", "val/loss", "test/loss")


def _cli(command: str, args: Sequence[str], log: Path) -> tuple[int, float]:
    """Run one console script, its output to `log`; return (exit status, wall seconds)."""
    exe = Path(sys.executable).parent / command
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run([str(exe), *args], stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    return code, time.perf_counter() - start


def _tail(log: Path, lines: int = 6) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_setup(task: str, setup: str, epochs: int, restore: bool, root: Path,
              threads: int | None = None) -> dict[str, Any]:
    """Train `task` under `setup` ("accelerator:precision"); optionally eval and predict from its last.ckpt. `threads`:
    torch's CPU threads per command (default: its own, one per core)."""
    accelerator, precision = setup.split(":", 1)
    device = [f"trainer.accelerator={accelerator}", f"trainer.precision={precision}",
              *([f"threads={threads}"] if threads else [])]
    run_dir = root / f"{task}-{accelerator}-{precision}"
    row: dict[str, Any] = {"task": task, "setup": setup}
    code, wall = _cli("gru-suite", [f"task={task}", *device, f"trainer.max_epochs={epochs}", "logger=csv",
                                    f"hydra.run.dir={run_dir}"], root / f"{run_dir.name}.train.log")
    row.update(train_exit=code, train_wall_s=wall)
    if code != 0:
        row["error"] = _tail(root / f"{run_dir.name}.train.log")
        return row
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row.update({key: metrics.get(key) for key in REPORTED})
    row["artifacts"] = sum(1 for p in (run_dir / "predictions").rglob("*") if p.is_file())
    if restore:
        ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
        for command, key in (("gru-suite-eval", "eval"), ("gru-suite-predict", "predict")):
            out_dir = root / f"{run_dir.name}.{key}"
            log = root / f"{run_dir.name}.{key}.log"
            code, wall = _cli(command, [f"task={task}", ckpt, *device, f"hydra.run.dir={out_dir}"], log)
            row.update({f"{key}_exit": code, f"{key}_wall_s": wall})
            if code != 0:
                row["error"] = _tail(log)
        row["restored_artifacts"] = sum(1 for p in (root / f"{run_dir.name}.predict").rglob("*")
                                        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log")
    return row


def task_names() -> list[str]:
    from gru_suite.registry import installed_tasks

    return sorted(installed_tasks())


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default="gpu:bf16-mixed,cpu:32-true",
                        help="comma-separated accelerator:precision pairs; the first also runs eval and predict")
    parser.add_argument("--tasks", default="", help="comma-separated tasks (default: every installed task)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run (default 3)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1; timings are then shared)")
    parser.add_argument("--out-dir", default=None, help="keep the run folders and logs here (default: a temp dir)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads per command (default: torch's, one per core; 1 on a shared CPU)")
    args = parser.parse_args(argv)
    if malformed := [s for s in args.setups.split(",") if s and (":" not in s or "" in s.split(":", 1))]:
        parser.error(f"--setups takes accelerator:precision pairs (e.g. cpu:32-true), got {', '.join(malformed)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t] or task_names()
    setups = [s for s in args.setups.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out_dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        jobs = [(task, setup, args.epochs, i == 0, root, args.threads) for task in tasks
                for i, setup in enumerate(setups)]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda job: run_setup(*job), jobs))
    table(
        f"{len(tasks)} tasks x {len(setups)} setups, {args.epochs} epochs on bundled data, device: {device_name()}",
        ["task", "setup", "train", "wall s", "s/epoch", "samples/s", "train loss", "val loss", "test loss",
         "artifacts", "eval", "predict"],
        [[r["task"], r["setup"], r["train_exit"], r["train_wall_s"], r.get("train/epoch_time_s"),
          r.get("train/samples_per_s"), r.get("train/loss"), r.get("val/loss"), r.get("test/loss"),
          r.get("artifacts"), r.get("eval_exit", ""), r.get("predict_exit", "")] for r in rows],
    )
    for r in rows:
        if "error" in r:
            print(f"\n-- {r['task']} {r['setup']} failed:\n{r['error']}")
    failed = [r for r in rows if r["train_exit"] or r.get("eval_exit") or r.get("predict_exit")]
    print(json.dumps(clean({"benchmark": "accelerators", "device": device_name(), "epochs": args.epochs,
                            "runs": rows, "failed": len(failed)})))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
