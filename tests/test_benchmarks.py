"""The device-check benchmark runs end to end (on the CPU here); the music benchmark's generation timing."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO
from gru_suite.backbone import GRUBackbone
from gru_suite.errors import UserError
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


def nab_like(root, series: int = 2, rows: int = 1200):
    """A NAB-layout corpus (data/<group>/<name>.csv, labels/combined_windows.json) of sines, each with one spike."""
    import numpy as np
    import pandas as pd

    stamps = pd.date_range("2024-01-01", periods=rows, freq="5min")
    (root / "data" / "grp").mkdir(parents=True)
    (root / "labels").mkdir()
    windows = {}
    for i in range(series):
        values = np.sin(np.arange(rows) / 10) + np.random.default_rng(i).normal(0, 0.05, rows)
        values[rows * 3 // 4] += 5
        frame = pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"), "value": values})
        frame.to_csv(root / "data" / "grp" / f"s{i}.csv", index=False)
        windows[f"grp/s{i}.csv"] = [[str(stamps[rows * 3 // 4 - 10]), str(stamps[rows * 3 // 4 + 10])]]
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def test_the_anomaly_benchmark_runs_on_a_nab_subset_without_its_streaming_series(tmp_path):
    nab = nab_like(tmp_path / "nab")
    (nab / "data" / "unlabelled").mkdir()  # a group the labels do not name: scored, shown as "-" in the tables
    (nab / "data" / "unlabelled" / "u.csv").write_text((nab / "data" / "grp" / "s0.csv").read_text())
    command = [sys.executable, str(REPO / "benchmarks" / "anomaly.py"), "--nab", str(nab), "--no-tuned",
               "--overrides", "trainer.max_epochs=1 task.detector.retrain.every=null backbone.hidden_size=8"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "realKnownCause/nyc_taxi.csv: streaming throughput skipped" in result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["corpus"] == {"files": 3, "labelled_files": 2, "windows": 2} and "streaming" not in report
    # the figures are those of the task's own test stage, which scored each series once
    assert report["task_test_check"]["agrees"] and report["scoring"]["series"] == 3
    standard = next(line.split() for line in result.stdout.splitlines() if line.startswith("standard "))
    assert standard[1] == standard[2] and standard[3] == "-"  # all = grp; the unlabelled group has no score
    # NAB's published detectors have no scores for files outside NAB's corpus
    assert report["published"]["ARTime"]["standard"] == {"all": None, "grp": None}
    assert next(line for line in result.stdout.splitlines() if line.startswith("ARTime ")).split()[1:] == ["-"] * 5
    named = subprocess.run([*command, "--stream-series", "grp/missing.csv"], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert named.returncode == 2 and named.stderr.strip().endswith(f"--stream-series: no {nab}/data/grp/missing.csv")
    assert "training" not in named.stdout  # refused before the work


def test_nabs_published_per_file_scores_give_nabs_published_corpus_figures():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import anomaly
    import pandas as pd

    files = pd.read_csv(anomaly.PUBLISHED_SCORES)["file"].unique().tolist()
    assert len(files) == 58
    # the whole corpus: 116 windows; null = -116 * fnWeight (nab/runner.py normalize with the null detector's score)
    whole = {p: {"all": {"null": -116.0 * (2 if p == "reward_low_FN_rate" else 1), "perfect": 116.0}}
             for p in anomaly.PROFILES}
    figures = anomaly.published_detectors(files, whole)
    final_results = {  # numenta/NAB results/final_results.json (commit 5a98e4f)
        "ARTime": (74.85377223215792, 65.15400017974811, 80.36228493638114),
        "Numenta HTM": (70.10105611943965, 63.11684160219828, 74.3202443095115),
        "CAD OSE": (69.89956896844828, 66.97713919047413, 73.18167250416667),
        "Random Cut Forest": (51.717054557073276, 38.360772142413786, 59.74876476310345),
    }
    for name, expected in final_results.items():
        assert [figures[name][p]["all"] for p in anomaly.PROFILES] == pytest.approx(expected, abs=1e-9)
        assert all(figures[name][p][g] is None for p in anomaly.PROFILES for g in figures[name][p] if g != "all")
    # one group's files alone, normalised by that group's own baselines
    group = [f for f in files if f.startswith("realAdExchange/")]
    some = anomaly.published_detectors(group, {p: {"all": {"null": -14.0, "perfect": 14.0},
                                                   "realAdExchange": {"null": -14.0, "perfect": 14.0}}
                                               for p in anomaly.PROFILES})
    assert some["CAD OSE"]["standard"]["all"] == some["CAD OSE"]["standard"]["realAdExchange"] == pytest.approx(
        100 * (0.832350327444 - 0.245878346979 + 2.48872770811 + 0.862098587352 + 0.622257696424 + 1.60471036268
               + 14) / 28)
    assert anomaly.published_detectors(["grp/other.csv"], whole)["ARTime"]["standard"]["all"] is None


def test_the_label_tuned_threshold_counts_the_rows_the_range_check_flags_at_every_threshold():
    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    import anomaly

    score = np.zeros(400)
    score[200] = np.inf  # a range-check flag outside the window: a false positive whatever the threshold
    tuned = anomaly.tune_threshold({"s.csv": score}, {"s.csv": [(300, 320)]}, "standard")
    assert tuned["threshold"] == np.inf and tuned["flags"]["s.csv"].tolist() == (score == np.inf).tolist()


def test_the_sentiment_benchmark_reads_a_held_back_pair_in_the_glue_layout(tmp_path):
    import random

    sys.path.insert(0, str(REPO / "benchmarks"))
    import sentiment

    rng = random.Random(0)
    words = {"1": ["good", "great", "superb"], "0": ["bad", "dull", "awful"]}

    def glue(path, rows):
        lines = [f"{' '.join(rng.choice(words[label]) for _ in range(4))} film\t{label}\n"
                 for label in (rng.choice("01") for _ in range(rows))]
        path.write_text("sentence\tlabel\n" + "".join(lines), encoding="utf-8")
        return path

    train, dev = glue(tmp_path / "train.tsv", 200), glue(tmp_path / "dev.tsv", 40)
    command = [sys.executable, str(REPO / "benchmarks" / "sentiment.py"), "--train", str(train), "--dev", str(dev),
               "--phrases", str(train), "--minutes", "0.05", "backbone.hidden_size=8", "task.model.embed_size=8"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "\n== dev.tsv (best checkpoint" in result.stdout and "Tree-LSTM" not in result.stdout  # SST-2's figures
    assert sentiment.is_sst2(Path("sst2/dev.tsv")) and sentiment.is_sst2(Path("kim2014/stsa.binary.dev"))
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["data"]["val_sentences"] == 20 and 0 <= report["dev"]["acc"] <= 1


def test_the_sentiment_benchmark_takes_the_text_column_a_tables_header_names(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import sentiment

    (tmp_path / "glue.tsv").write_text("sentence\tlabel\na fine film\t1\n", encoding="utf-8")
    (tmp_path / "both.csv").write_text("sentence,text,label\nignored,a dull film,0\n", encoding="utf-8")
    (tmp_path / "lines.txt").write_text("1 a fine film\n", encoding="utf-8")
    assert [(e.text, e.label) for e in sentiment.read_sst(tmp_path / "glue.tsv")] == [("a fine film", "1")]
    assert [(e.text, e.label) for e in sentiment.read_sst(tmp_path / "both.csv")] == [("a dull film", "0")]
    assert [(e.text, e.label) for e in sentiment.read_sst(tmp_path / "lines.txt")] == [("a fine film", "1")]
    (tmp_path / "glue.txt").write_text("sentence\tlabel\na fine film\t1\n", encoding="utf-8")  # by its header
    assert [(e.text, e.label) for e in sentiment.read_sst(tmp_path / "glue.txt")] == [("a fine film", "1")]
    (tmp_path / "out").mkdir()
    assert sentiment.test_file(tmp_path / "glue.txt", tmp_path / "out").read_text() == "1 a fine film\n"  # as --dev
    (tmp_path / "other.csv").write_text("review,label\nfine,1\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"no column 'text'.*review"):
        sentiment.read_sst(tmp_path / "other.csv")


@pytest.mark.parametrize("head", ["independent", "autoregressive"])
def test_music_generation_timing_recomputes_what_generate_carries(head):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import music

    model = MusicModel(partial(GRUBackbone, hidden_size=16), 12, head, embed_size=8, head_units=16, input_skip=True)
    speed = music.generation_speed(SimpleNamespace(model=model), 12, seed=0)
    assert speed["steps"] == 12 and speed["carried_steps_per_s"] > 0 and speed["recomputed_steps_per_s"] > 0
    assert speed["same_notes"]  # the recomputation reads the whole prefix and draws what generate drew


def test_the_music_benchmark_refuses_a_file_without_held_out_pieces(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import music

    midi, one_split = tmp_path / "piece.mid", tmp_path / "train_only.json"
    midi.write_bytes(b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0")
    one_split.write_text(json.dumps({"train": [[[60, 64]]]}), encoding="utf-8")
    for path in (midi, one_split):
        assert music.main(["--jsb", str(path)]) == 2
        assert f"error: {path}: not JSB Chorales JSON" in capsys.readouterr().err
    both = tmp_path / "jsb.json"
    both.write_text(json.dumps({"train": [[[60]]], "valid": [[[62]]]}), encoding="utf-8")
    assert music.reported_split(both) == "valid"


def test_the_speech_benchmark_tests_fsdds_own_test_takes_given_the_dataset_or_its_recordings(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speech

    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for take in (5, 10):  # names are all it reads
        (recordings / f"0_ann_{take}.wav").touch()
    assert speech.default_test_takes(speech.recorded(tmp_path / "fsdd")[1]) == (5, 9)
    assert speech.recorded(tmp_path / "fsdd") == speech.recorded(recordings)
    (recordings / "0_ann_4.wav").touch()
    (recordings / "notes_0.wav").touch()
    assert speech.default_test_takes(speech.recorded(recordings)[1]) == (0, 4)


def test_the_speech_benchmark_names_a_missing_speaker_or_takes_before_any_training(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speech

    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for name in ("0_theo_10.wav", "1_spk_02_49.wav", "notes.wav"):  # names are all it reads
        (recordings / name).touch()
    found = speech.recorded(tmp_path)
    assert found == ({"theo", "spk_02"}, {10, 49})
    assert speech.layout_problem(tmp_path, *found, ["seen", "unseen"], "george", (5, 9)) == (
        f"--speaker george: no recordings of that speaker in {tmp_path}; the speakers are ['spk_02', 'theo']")
    assert speech.layout_problem(tmp_path, *found, ["seen"], "george", (5, 9)) == (
        f"--test-takes 5-9: no recordings of those takes in {tmp_path}; the takes here are 10-49")
    assert speech.layout_problem(tmp_path, *found, ["seen", "unseen"], "spk_02", (10, 14)) is None
    from gru_suite.testing import compose_train_config

    unseen = speech.settings("12", (5, 9))["unseen"]
    cfg = compose_train_config("speech", ["experiment=fsdd", "task.data.fsdd=null", *unseen], tmp_path / "run")
    assert list(cfg.task.data.fsdd_split.test_speakers) == ["12"]  # a speaker named by digits is a name, not a number
    assert speech.main(["--fsdd", str(tmp_path), "--speaker", "george"]) == 2  # at once, not after the seen run
    assert capsys.readouterr().err.endswith("error: --speaker george: no recordings of that speaker in "
                                            f"{tmp_path}; the speakers are ['spk_02', 'theo']\n")


def test_the_speech_benchmark_reports_the_settings_that_ran_when_a_later_one_fails(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import speech

    (tmp_path / "recordings").mkdir()
    for name in ("0_ann_5.wav", "0_bob_10.wav"):
        (tmp_path / "recordings" / name).touch()
    seen = {"train_utterances": 1, "epochs_run": 1, "best_epoch": 0, "best_val_cer": 0.5, "fit_wall_s": 1.0}

    def run_setting(fsdd, name, overrides, args, folder):
        if name == "unseen":
            raise UserError("the FSDD split leaves no val recordings")
        return seen

    monkeypatch.setattr(speech, "run_setting", run_setting)
    assert speech.main(["--fsdd", str(tmp_path), "--speaker", "bob"]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out.splitlines()[-1])
    assert report["settings"] == {"seen": seen}  # its figures are not lost
    assert report["failed_settings"] == {"unseen": "the FSDD split leaves no val recordings"}
    assert "error: setting unseen: the FSDD split leaves no val recordings" in err


def test_the_etth1_section_counts_the_standard_split_in_the_files_own_steps(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import forecasting

    def ett(name, step):
        path = tmp_path / name
        path.write_text(f"date,OT\n2016-07-01 00:00:00,1\n2016-07-01 00:{step:02d}:00,2\n")
        return path

    assert forecasting.per_step_split(ett("repeated.csv", 0), []) == []  # no step: the task names the stamps
    hourly = tmp_path / "ETTh2.csv"
    hourly.write_text("date,OT\n2016-07-01 00:00:00,1\n2016-07-01 01:00:00,2\n")
    assert forecasting.per_step_split(hourly, []) == []  # the preset's rows are hours
    quarter = ett("ETTm1.csv", 15)
    assert forecasting.per_step_split(quarter, []) == ["task.data.split=[34560,11520,11520]", "task.data.season=96"]
    assert forecasting.per_step_split(quarter, ["task.data.season=48"]) == ["task.data.split=[34560,11520,11520]"]
    assert forecasting.per_step_split(tmp_path / "missing.csv", []) == []
    renamed = tmp_path / "ETTm2.csv"
    renamed.write_text(quarter.read_text().replace("date,", "stamp,", 1))
    assert forecasting.per_step_split(renamed, ["task.data.time_column=stamp"]) == [
        "task.data.split=[34560,11520,11520]", "task.data.season=96"]  # the time column the overrides name
    unix = tmp_path / "unix.csv"
    unix.write_text("date,OT\n1467331200,1\n1467332100,2\n")
    assert forecasting.per_step_split(unix, ["task.data.time_unit=s"])[1] == "task.data.season=96"
    day_first = tmp_path / "day_first.csv"
    day_first.write_text("date,OT\n01/07/2016 23:45,1\n02/07/2016 00:00,2\n")
    assert forecasting.per_step_split(day_first, ["task.data.time_format=%d/%m/%Y %H:%M"])[1] == "task.data.season=96"


def test_the_etth1_section_trains_at_the_seed_given_else_at_the_presets(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import forecasting

    class Trained(Exception):
        pass

    seeds = []

    def fit_and_test(cfg, seed):
        seeds.append((cfg.seed, seed))
        raise Trained

    monkeypatch.setattr(forecasting, "fit_and_test", fit_and_test)
    path = tmp_path / "ETTh1.csv"
    path.write_text("date,OT\n2016-07-01 00:00:00,1\n2016-07-01 01:00:00,2\n")
    for seed in ([], ["--seed", "7"]):
        with pytest.raises(Trained):
            forecasting.main(["--sections", "etth1", "--etth1", str(path), *seed])
    assert seeds == [(42, 42), (7, 7)]


def test_the_etth1_sections_reference_row_is_shown_only_beside_the_work_it_was_published_for():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import forecasting

    assert forecasting.segrnn_reference(Path("data/ETTh1.csv"), 96, 96) == (0.368, 0.395)
    assert forecasting.segrnn_reference(Path("data/ETTm1.csv"), 96, 96) is None
    assert forecasting.segrnn_reference(Path("data/ETTh1.csv"), 336, 96) is None


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


def test_the_steps_section_times_each_part_of_a_step_on_the_speed_sections_work(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import forecasting

    assert forecasting.main(["--sections", "steps", "--epochs", "1", "--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"]
    assert report["batches_per_epoch"] == 53 and report["timed_epochs"] == 2  # the seed_keras_example windows
    parts = ("suite_batches_ms", "collated_batches_ms", "suite_step_fused_ms", "plain_step_fused_ms",
             "plain_step_unfused_ms")
    assert all(report[part] > 0 for part in parts)


def test_benchmarks_name_every_wrong_setting_and_refuse_thread_counts_below_one(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import argparse

    import _common

    from gru_suite.errors import UserError
    from gru_suite.testing import compose_train_config

    cfg = compose_train_config("forecasting", ["backbone.hidden_size=abc", "optimizer.lr=fast"], tmp_path)
    with pytest.raises(UserError, match=r"^2 settings are wrong:\n  backbone\.hidden_size must be an integer"):
        _common.fit_and_test(cfg, seed=0)  # before anything is built (torch's own TypeError otherwise)
    assert _common.positive_int("2") == 2
    for text in ("0", "-2", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            _common.positive_int(text)
