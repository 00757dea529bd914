"""The DDP path, simulated with two CPU processes."""

import json

import pytest

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


@pytest.mark.parametrize("task", sorted(WHOLE_PASS))
def test_ddp_sim_scores_whole_pass_metrics_over_every_process_share(task, tmp_path):
    """NAB, F1 and calibration need every test item at once: two processes must report what one reports."""
    tiny, names = WHOLE_PASS[task]
    result = run_cli("gru-suite", f"task={task}", "trainer=cpu", "trainer.max_epochs=1", "threads=1", *tiny,
                     "test_after_training=false", "predict_after_training=false", f"hydra.run.dir={tmp_path / 'train'}")
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    scores = {}
    for trainer in ("cpu", "ddp_sim"):
        out = tmp_path / trainer
        result = run_cli("gru-suite-eval", f"ckpt_path={ckpt}", f"trainer={trainer}", "threads=1", f"hydra.run.dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        scores[trainer] = json.loads((out / "test_metrics.json").read_text())
    for name in names:
        assert scores["ddp_sim"][f"test/{name}"] == pytest.approx(scores["cpu"][f"test/{name}"], rel=1e-5), name
