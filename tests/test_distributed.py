"""The DDP path, simulated with two CPU processes."""

import json

import pandas as pd

from conftest import TINY, run_cli


def test_ddp_sim_trains_into_one_run_folder(tmp_path):
    result = run_cli("gru-suite", "task=forecasting", "trainer=ddp_sim", "trainer.max_epochs=2", *TINY,
                     f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["test/mse"] > 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["train/samples_per_s"].dropna().gt(0).all()
    assert "gru-suite-predict" in result.stderr + result.stdout  # artifacts are left to predict
