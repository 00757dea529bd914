"""The device-check benchmark runs end to end (on the CPU here); the music benchmark's generation timing."""

import json
import subprocess
import sys
from functools import partial
from types import SimpleNamespace

import pytest

from conftest import REPO
from gru_suite.backbone import GRUBackbone
from gru_suite_plugins.music.model import MusicModel


def test_accelerators_benchmark_trains_restores_and_reports(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "accelerators.py"), "--setups", "cpu:32-true,cpu:bf16-mixed",
         "--tasks", "forecasting", "--epochs", "1", "--threads", "1", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["failed"] == 0 and [r["setup"] for r in report["runs"]] == ["cpu:32-true", "cpu:bf16-mixed"]
    first, second = report["runs"]
    assert first["eval_exit"] == 0 and first["predict_exit"] == 0 and first["restored_artifacts"] == 2
    assert "eval_exit" not in second and second["artifacts"] == 2  # only the first setup restores
    assert all(r["test/loss"] > 0 for r in report["runs"])


@pytest.mark.parametrize("head", ["independent", "autoregressive"])
def test_music_generation_timing_recomputes_what_generate_carries(head):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import music

    model = MusicModel(partial(GRUBackbone, hidden_size=16), 12, head, embed_size=8, head_units=16, input_skip=True)
    speed = music.generation_speed(SimpleNamespace(model=model), 12, seed=0)
    assert speed["steps"] == 12 and speed["carried_steps_per_s"] > 0 and speed["recomputed_steps_per_s"] > 0


def test_the_lightning_floor_times_each_epoch_after_the_warm_up():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import forecasting
    import torch

    x, y = torch.randn(70, 10, 1), torch.randn(70, 3)
    floor = forecasting.floor_fit(x, y, hidden=8, lr=1e-3, batch_size=32, epochs=2, seed=0)
    assert len(floor["wall"]) == len(floor["cpu"]) == 2 and min(floor["wall"]) > 0  # the warm-up epoch dropped
    manual = forecasting.floor_fit(x, y, hidden=8, lr=1e-3, batch_size=32, epochs=2, seed=0, manual=True)
    untrained = forecasting.floor_fit(x, y, hidden=8, lr=1e-3, batch_size=32, epochs=-1, seed=0)
    for name, weight in floor["weights"].items():  # manual optimisation does the same work, step for step
        assert torch.equal(manual["weights"][name], weight)
    assert not all(torch.equal(untrained["weights"][n], w) for n, w in floor["weights"].items())
