"""The DDP path, simulated with two CPU processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import TINY, run_cli
from gru_suite import run
from gru_suite.checkpoint import load_checkpoint
from gru_suite.testing import compose_train_config
from gru_suite_plugins.translation.synth import corpus_files


def test_ddp_sim_trains_into_one_run_folder(tmp_path):
    result = run_cli("gru-suite", "task=forecasting", "trainer=ddp_sim", "trainer.max_epochs=2", *TINY,
                     "+task.data.lookbak=3", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    warning = "+task.data.lookbak: not in the config of task"  # said once on the console, and in each process's own log
    assert (result.stdout + result.stderr).count(warning) == 1, result.stdout + result.stderr
    assert all(warning in (tmp_path / name).read_text() for name in ("train.log", "train_rank1.log"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["test/mse"] > 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["train/samples_per_s"].dropna().gt(0).all()
    assert "gru-suite-predict" in result.stderr + result.stdout  # artifacts are left to predict


WHOLE_PASS = {  # task: (tiny overrides, metrics computed over the whole test pass)
    "anomaly": (["backbone.hidden_size=16", "task.data.crop_length=32", "task.data.batch_size=64"],
                ["nab_standard", "nab_reward_low_FP_rate", "nab_reward_low_FN_rate", "event_f1", "point_f1"]),
    "sentiment": (["backbone.hidden_size=16", "task.model.embed_size=16", "task.data.batch_size=16"],
                  ["acc", "f1", "ece", "temperature"]),
    "speech": (["backbone.hidden_size=32", "task.model.frontend_size=32", "task.data.batch_size=8"],
               ["wer", "cer", "accuracy"]),
    "translation": (["backbone.hidden_size=16", "task.model.embed_size=16", "task.tokenizer.vocab_size=200",
                     "task.decode.beam_size=2", "task.decode.max_length=20"], ["bleu", "chrf", "perplexity"]),
}


def test_a_process_that_fails_alone_leaves_the_first_with_one_line_naming_it(tmp_path):
    (tmp_path / "only_here.py").write_text(
        "import pytorch_lightning as pl\n"
        "from gru_suite.errors import UserError\n\n"
        "class MissingOnRank1(pl.Callback):\n"
        "    def on_train_start(self, trainer, pl_module):\n"
        "        if trainer.global_rank == 1:\n"
        "            raise UserError('data.csv: no such file on this node')\n")
    result = run_cli("gru-suite", "task=forecasting", "trainer=ddp_sim", "trainer.max_epochs=1", *TINY, "threads=1",
                     "+callbacks.missing._target_=only_here.MissingOnRank1", f"hydra.run.dir={tmp_path / 'run'}",
                     env={"PYTHONPATH": str(tmp_path)})
    # 1, or -9 where Lightning's watch over the processes it started (every 5 s) kills the first once one has
    # failed (on a loaded machine, before the first has met the closed connection): it says so first
    assert result.returncode in (1, -9) and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: data.csv: no such file on this node" in result.stderr  # the failed process's own line
    said = ("error: another process of this run failed, so this one stopped (RuntimeError: " in result.stderr
            and "that process's own error is above and in train_rank1.log" in result.stderr)
    watched = ("error: the run's process of local rank 1 ended with exit code 2 (its own error is above and in its "
               "log, *_rank1.log), so every process of the run stops") in result.stderr
    assert said or watched and result.returncode == -9, result.stderr[-3000:]
    assert "error: data.csv: no such file on this node" in (tmp_path / "run" / "train_rank1.log").read_text()


def test_only_a_collectives_lost_peer_is_told_as_another_processs_failure(tmp_path, monkeypatch):
    from gru_suite.distributed import lost_peer

    import torch.distributed as dist

    for name in ("train.log", "train_rank1.log"):
        (tmp_path / name).write_text("error: ...\n")
    gloo = RuntimeError("[/x/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:2758. This ...")
    assert lost_peer(gloo, tmp_path, "train").endswith("that process's own error is above and in train_rank1.log")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a later process: the first's log, not its own
    assert lost_peer(gloo, tmp_path, "train").endswith("that process's own error is above and in train.log")
    assert lost_peer(RuntimeError("reading s3://bucket/x.csv: Connection reset by peer"), tmp_path, "train") is None
    assert lost_peer(dist.DistNetworkError("EADDRINUSE: address already in use"), tmp_path, "train") is None
    assert lost_peer(ValueError("bad value"), tmp_path, "train") is None


def test_a_resumed_ddp_run_trains_on_as_if_it_had_never_stopped(tmp_path):
    """Each process continues its own generators (sentiment's processes batch texts of other lengths, so their dropout
    draws differ) and its share of the epoch's length-bucketed order."""
    quiet = [*WHOLE_PASS["sentiment"][0], "trainer=ddp_sim", "threads=1", "test_after_training=false",
             "predict_after_training=false"]
    for folder, epochs, resume in (("whole", 2, []), ("parts", 1, []), ("parts", 2, ["ckpt_path=last"])):
        result = run_cli("gru-suite", "task=sentiment", *quiet, f"trainer.max_epochs={epochs}", *resume,
                         f"hydra.run.dir={tmp_path / folder}")
        assert result.returncode == 0, result.stderr[-3000:]
    whole, parts = (torch.load(tmp_path / folder / "checkpoints" / "last.ckpt", weights_only=False)
                    for folder in ("whole", "parts"))
    states = whole["gru_suite"]["rng"]
    assert len(states) == 2 and states[0]["torch"] != states[1]["torch"]
    assert parts["epoch"] == whole["epoch"] == 1
    assert all(torch.equal(parts["state_dict"][name], weights) for name, weights in whole["state_dict"].items())
    one = [arg for arg in quiet if arg != "trainer=ddp_sim"]  # two processes' generators, one process to take them
    result = run_cli("gru-suite", "task=sentiment", *one, "trainer.max_epochs=3", "ckpt_path=last",
                     f"hydra.run.dir={tmp_path / 'parts'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("the checkpoint holds the random generators of 2 training process(es) and this run has 1"
            in (tmp_path / "parts" / "train.log").read_text())


def odd_test_split(folder: Path) -> Path:
    """The bundled translation corpus with 299 test pairs (it has 300)."""
    folder.mkdir()
    for name, text in corpus_files().items():
        keep = 299 if name.startswith("test") else None
        (folder / name).write_text("".join(text.splitlines(keepends=True)[:keep]), encoding="utf-8")
    return folder


@pytest.mark.parametrize("task", sorted(WHOLE_PASS))
def test_ddp_sim_scores_whole_pass_metrics_over_every_process_share(task, tmp_path):
    """NAB, F1 and calibration need every test item at once: two processes must report what one reports."""
    tiny, names = WHOLE_PASS[task]
    if task == "translation":  # an odd test split: the DDP sampler pads one process's share with a repeated pair
        tiny = [*tiny, f"task.data.path={odd_test_split(tmp_path / 'corpus')}"]
    cfg = compose_train_config(task, ["trainer=cpu", "trainer.max_epochs=1", "threads=1", *tiny,
                                      "test_after_training=false", "predict_after_training=false"], tmp_path / "train")
    threads = torch.get_num_threads()
    try:  # one process, in this one (as the DDP processes below, one thread)
        run.train(cfg)
        ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
        eval_cfg = compose_train_config(task, ["trainer=cpu", "threads=1", f"ckpt_path={ckpt}"], tmp_path / "cpu")
        module = load_checkpoint(ckpt)
        one = run.evaluate(eval_cfg, module.task, module)
    finally:
        torch.set_num_threads(threads)
    result = run_cli("gru-suite-eval", f"ckpt_path={ckpt}", "trainer=ddp_sim", "threads=1",
                     f"hydra.run.dir={tmp_path / 'ddp_sim'}")
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "ddp_sim" / "test_metrics.json").read_text())
    assert "metrics written to" not in (tmp_path / "ddp_sim" / "eval_rank1.log").read_text()  # by the first alone
    for name in names:
        assert two[f"test/{name}"] == pytest.approx(one[f"test/{name}"], rel=1e-5), name


def test_the_sigterm_handler_makes_no_collective_call(tmp_path, monkeypatch):
    """Lightning's SIGTERM handler broadcast from inside the signal handler: mid-step, that broadcast met the other
    processes' gradient all-reduce (or nothing) and hung them all. The suite's sets the flag that each training
    step's start broadcasts."""
    trainer = run.build_trainer(compose_train_config("forecasting", [], tmp_path))
    collectives = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "broadcast", lambda *args, **kwargs: collectives.append(args))
    monkeypatch.setattr(type(trainer), "world_size", property(lambda self: 2))
    trainer._signal_connector._sigterm_notifier_fn(signal.SIGTERM, None)
    assert trainer.received_sigterm and collectives == []


def test_sigterm_stops_every_process_of_a_ddp_run_where_it_can_resume(tmp_path):
    """One line and exit code 143 (as `scancel` does on SLURM, the signal goes to the first process, which passes
    it on to the process Lightning started); every process stops at the next step's start."""
    command = [str(Path(sys.executable).parent / "gru-suite"), "task=forecasting", "trainer=ddp_sim", *TINY,
               "threads=1", "trainer.max_epochs=100000", f"hydra.run.dir={tmp_path}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TQDM_DISABLE": "1"}, start_new_session=True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # into the next epoch's steps
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the run and the process it started
        pytest.fail("the DDP run hung after SIGTERM")
    assert process.returncode == 143, stderr[-2000:]
    assert f"error: stopped by SIGTERM; resume: the same command with ckpt_path=last hydra.run.dir={tmp_path}" \
        in stderr


TIED = """
import os, signal, subprocess, sys, time, types
from lightning_fabric.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from gru_suite.distributed import tie_started_processes_to_the_first

launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
tie_started_processes_to_the_first(types.SimpleNamespace(strategy=types.SimpleNamespace(launcher=launcher)))
if sys.argv[1] == "first":
    started = subprocess.Popen([sys.executable, "-c", __doc__, "started"], env={**os.environ, "LOCAL_RANK": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    started.stdout.readline()  # tied
    print(started.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
print("tied", flush=True)
time.sleep(60)
"""


def _without_ranks() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if name not in ("LOCAL_RANK", "NODE_RANK", "GRU_SUITE_FIRST_PROCESS")}


def test_the_processes_lightning_starts_end_with_the_first():
    """Killed before Lightning's SIGTERM handler was in place (process start-up, data set-up), or by SIGKILL, the first
    process ended alone, and the processes it had started waited for it until killed."""
    script = f"__doc__ = {TIED!r}\n{TIED}"
    result = subprocess.run([sys.executable, "-c", script, "first"], capture_output=True, text=True, timeout=90,
                            check=False, env=_without_ranks())
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    started = int(result.stdout.split()[0])
    deadline = time.monotonic() + 20
    while Path(f"/proc/{started}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{started}").exists():
        os.kill(started, signal.SIGKILL)
        pytest.fail("the process Lightning started outlived the first")


def test_a_started_process_whose_first_has_ended_ends_at_once():
    """The first process may end before the one it started asks to be tied to it."""
    script = f"__doc__ = {TIED!r}\n{TIED}"
    env = {**_without_ranks(), "LOCAL_RANK": "1", "GRU_SUITE_FIRST_PROCESS": str(os.getpid() + 10**6)}
    result = subprocess.run([sys.executable, "-c", script, "started"], capture_output=True, text=True, timeout=90,
                            check=False, env=env)
    assert result.returncode == -signal.SIGTERM and "tied" not in result.stdout, result.stderr[-2000:]


def test_a_sweep_refuses_a_trainer_that_starts_its_own_processes(tmp_path):
    """Lightning starts the other processes by running the command again, `-m` included: each would run the whole
    sweep. Every job says so in one line (the sweep's exit code 2), before any process is started."""
    result = run_cli("gru-suite", "-m", "task=forecasting", "trainer=ddp_sim", "seed=1,2", *TINY,
                     f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("error: a sweep (-m, or an hparams_search) cannot run a trainer that starts its 2 "
                               "processes itself") == 2
    assert not list(tmp_path.glob("*/checkpoints"))


def test_the_watch_over_started_processes_names_the_one_that_failed_before_it_kills_them(capsys, monkeypatch):
    from gru_suite.distributed import SayingObserver

    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    failed.wait()
    observer = SayingObserver(main_pid=12345, child_processes=[failed])
    assert observer._run()  # what its thread does every 5 s
    assert ("error: the run's process of local rank 1 ended with exit code 2 (its own error is above and in its log, "
            "*_rank1.log), so every process of the run stops") in capsys.readouterr().err
    assert killed == [(12345, signal.SIGKILL)]  # then Lightning's own ending


def test_a_run_that_starts_its_own_processes_watches_them_with_the_saying_observer(monkeypatch):
    import pytorch_lightning as pl
    import pytorch_lightning.strategies.launchers.subprocess_script as lightning_launcher

    from gru_suite import distributed

    monkeypatch.setattr(lightning_launcher, "_launch_process_observer", lightning_launcher._launch_process_observer)
    monkeypatch.setenv(distributed.FIRST_PROCESS_VARIABLE, "0")  # restored (absent) after the test: the code sets it
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    distributed.tie_started_processes_to_the_first(trainer)
    assert lightning_launcher._launch_process_observer is distributed._observe_started_processes
