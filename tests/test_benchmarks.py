"""The device-check benchmark runs end to end (on the CPU here)."""

import json
import subprocess
import sys

from conftest import REPO


def test_accelerators_benchmark_trains_restores_and_reports(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "accelerators.py"), "--setups", "cpu:32-true,cpu:bf16-mixed",
         "--tasks", "forecasting", "--epochs", "1", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["failed"] == 0 and [r["setup"] for r in report["runs"]] == ["cpu:32-true", "cpu:bf16-mixed"]
    first, second = report["runs"]
    assert first["eval_exit"] == 0 and first["predict_exit"] == 0 and first["restored_artifacts"] == 2
    assert "eval_exit" not in second and second["artifacts"] == 2  # only the first setup restores
    assert all(r["test/loss"] > 0 for r in report["runs"])
