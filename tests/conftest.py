"""Shared fixtures: CLI runner and a tiny trained forecasting checkpoint."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# The expected values here come from CPU runs (CI has no GPU), and CLI commands pick a GPU when
# they see one, so a GPU machine would train different models: the tests and every command they
# start see no GPU, unless GRU_SUITE_TEST_GPU=1 asks for it, to run the tests marked `gpu`
# (`GRU_SUITE_TEST_GPU=1 python -m pytest -m gpu`). `benchmarks/accelerators.py` is the CLI's GPU check.
if not os.environ.get("GRU_SUITE_TEST_GPU"):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def needs_gpu(test: Callable) -> Callable:
    """Mark `test` as a `gpu` test, skipped where no CUDA device is visible."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs GRU_SUITE_TEST_GPU=1 and a CUDA device")
    return pytest.mark.gpu(skip(test))


TINY = [
    "backbone.hidden_size=16",
    "task.data.lookback=24",
    "task.data.horizon=6",
    "task.data.batch_size=128",
]


def run_cli(command: str, *args: str, cwd: Path | None = None, timeout: int = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a gru-suite console script and capture its output (`env`: variables added to the environment)."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    exe = Path(sys.executable).parent / command
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout
    )


def run_forked(command: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a gru-suite console script as `run_cli` does, but in a fork of this process, with one torch thread: the
    stack it imports is loaded already (a new process spends ~7 s importing it), and what the run changes in its
    process (environment, loggers, Hydra's state) does not reach the tests'. For commands that refuse their input or
    train little; `run_cli` where the process itself is tested (its warnings, signals, console output). A child
    still at work after `timeout` seconds is killed (subprocess.TimeoutExpired); one that dies without reporting
    (a signal) returns its exit status, with no output."""
    import gru_suite.run  # noqa: F401  (imported once here, not in every fork)
    from gru_suite import cli

    entry = {"gru-suite": cli.train, "gru-suite-eval": cli.evaluate, "gru-suite-predict": cli.predict,
             "gru-suite-gates": cli.gates}[command]
    readable, writable = os.pipe()
    if (pid := os.fork()) == 0:  # the child: run, report (exit code, stdout, stderr), end without pytest's exit work
        try:
            os.close(readable)
            os.chdir(cwd or REPO)
            torch.set_num_threads(1)  # as DataLoader's forked workers do: the parent's OpenMP threads are not theirs
            os.environ.update(TQDM_DISABLE="1", HYDRA_FULL_ERROR="0")
            sys.argv = [command, *args]
            atexit._clear()  # the parent's are not the child's to run; the command's run as the child ends
            stdout, stderr, code = io.StringIO(), io.StringIO(), 0
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    entry()
                except SystemExit as stop:
                    code = 0 if stop.code is None else stop.code
                except BaseException:  # as Python ends a process: the traceback, exit code 1
                    traceback.print_exc()
                    code = 1
                atexit._run_exitfuncs()
            with os.fdopen(writable, "w") as pipe:
                json.dump([code, stdout.getvalue(), stderr.getvalue()], pipe)
        finally:
            os._exit(0)
    os.close(writable)
    with os.fdopen(readable) as pipe:
        if not select.select([pipe], [], [], timeout)[0]:  # nothing written, the pipe still open: at work
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired([command, *args], timeout)
        report = pipe.read()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    code, stdout, stderr = json.loads(report) if report else (status, "", "")
    return subprocess.CompletedProcess([command, *args], code, stdout, stderr)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A forecasting run folder trained for two epochs through the real CLI."""
    run_dir = tmp_path_factory.mktemp("forecasting_run")
    result = run_cli("gru-suite", "task=forecasting", "trainer.max_epochs=2", *TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def resumed_and_uninterrupted(task: str, overrides: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """The last weights of a run of two epochs, and of a run stopped after one and resumed for the second."""
    from gru_suite import run
    from gru_suite.testing import compose_train_config

    quiet = [*overrides, "test_after_training=false", "predict_after_training=false", "threads=1"]
    run.train(compose_train_config(task, [*quiet, "trainer.max_epochs=2"], tmp_path / "whole"))
    run.train(compose_train_config(task, [*quiet, "trainer.max_epochs=1"], tmp_path / "parts"))
    run.train(compose_train_config(task, [*quiet, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "parts"))
    last = [torch.load(tmp_path / folder / "checkpoints" / "last.ckpt", weights_only=False)
            for folder in ("parts", "whole")]
    assert [checkpoint["epoch"] for checkpoint in last] == [1, 1]
    return last[0]["state_dict"], last[1]["state_dict"]


def resumed_part_way_and_uninterrupted(task: str, overrides: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """The last checkpoints of a run of two epochs of 4 batches validated every 2, and of a run stopped after its
    first validation (part-way through epoch 0) and resumed from the `last.ckpt` saved there."""
    from gru_suite import run
    from gru_suite.testing import compose_train_config

    quiet = [*overrides, "test_after_training=false", "predict_after_training=false", "threads=1",
             "trainer.limit_train_batches=4", "trainer.val_check_interval=2", "trainer.max_epochs=2"]
    run.train(compose_train_config(task, quiet, tmp_path / "whole"))
    run.train(compose_train_config(task, [*quiet, "trainer.max_steps=2"], tmp_path / "parts"))
    part = torch.load(tmp_path / "parts" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (part["epoch"], part["global_step"]) == (0, 2)  # saved at the validation part-way through epoch 0
    run.train(compose_train_config(task, [*quiet, "ckpt_path=last"], tmp_path / "parts"))
    return tuple(torch.load(tmp_path / folder / "checkpoints" / "last.ckpt", weights_only=False)
                 for folder in ("parts", "whole"))

