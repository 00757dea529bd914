#!/usr/bin/env python
"""Anomaly-detection benchmark for GRU Suite on the Numenta Anomaly Benchmark (CPU).

``python benchmarks/anomaly.py --nab PATH/TO/NAB`` trains the anomaly task exactly as

    gru-suite task=anomaly experiment=nab task.data.path=<nab>/data \\
        task.data.windows_path=<nab>/labels/combined_windows.json <overrides>

does (composed config, ``gru_suite.run.build_task/build_module/build_trainer``, fit, then
the task's test stage on the best checkpoint by ``val/loss``, which scores every series once;
logger and progress bar off), and prints, one table per section:

training     epochs, seconds, val/loss of the best checkpoint.
label-free   NAB score (normalised, 0 = null detector, 100 = perfect) of each profile,
             overall and per group, and point / event / point-adjusted F1, from the flags
             the task's test stage produced with its label-free threshold (``task.scoring``);
             the totals, recomputed here from those flags, must equal the metrics the stage logged.
per-series   rows, probation, windows, flags, windows hit, F1s and raw NAB score.
label-tuned  "label-tuned threshold (NAB leaderboard protocol)": one global threshold on
             the anomaly score per profile, chosen on the labels to maximise the corpus
             score (exact sweep over every distinct score, as NAB's optimizer does).
             This, not the label-free figure, is what NAB's leaderboard reports.
published    NAB's published detectors (ARTime, Numenta HTM, CAD OSE, Random Cut Forest) on the same files:
             the per-file raw scores NAB's repository lists for them (references/nab_published_scores.csv), summed
             over the files scored here and normalised over their windows, beside this run's figures ("-" where
             a file is not in that table, e.g. a corpus other than NAB's).
speed        the test stage's seconds per series (model forward with retraining + flagger) and the
             streaming throughput of ``AnomalyStream.update`` after the probationary period.

The label-free figures are NOT the leaderboard protocol. The leaderboard's own figures (Numenta HTM
70.5, ARTime 74.9, standard profile) are of the full 58-file corpus; the `published` table gives those
detectors' figures on the files scored here.

``--groups`` trains and scores only some groups (through a temporary folder of symbolic
links; the data are never copied). The last line of stdout is one JSON object with all
figures; Lightning's chatter goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, the folder is sys.path[0] already; imported otherwise, it is not
    sys.path.insert(0, str(HERE))

from _common import clean, fit_and_test, positive_int, quiet, quote, table  # noqa: E402

# The task's yaml defaults were chosen on artificialWithAnomaly + realAdExchange, 3 seeds
# (see benchmarks/README.md); extra Hydra overrides go on top.
DEFAULT_OVERRIDES = ""

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
LEADERBOARD = {"Numenta HTM": 70.5, "ARTime": 74.9}  # NAB scoreboard, standard profile, 58 files
# NAB's published per-file raw scores (numenta/NAB results/<detector>/<detector>_<profile>_scores.csv, the versions
# whose totals give results/final_results.json; see references/README.md), columns named as there.
PUBLISHED_SCORES = HERE / "references" / "nab_published_scores.csv"
PUBLISHED = {"ARTime": "ARTime", "numenta": "Numenta HTM", "contextOSE": "CAD OSE",
             "randomCutForest": "Random Cut Forest"}
DEFAULT_STREAM_SERIES = "realKnownCause/nyc_taxi.csv"
PROTOCOL_NOTE = (
    "Label-free thresholds (task.scoring): NAB's official leaderboard instead tunes one threshold per profile "
    "on the labels, so the label-free figures are not the leaderboard protocol."
)


# --------------------------------------------------------------------------- helpers


def _group(name: str) -> str:
    parts = Path(name).parts
    return parts[0] if len(parts) > 1 else "(root)"


# --------------------------------------------------------------------------- data and config


def nab_groups(nab: Path) -> list[str]:
    from gru_suite.errors import UserError

    data = nab / "data"
    if not data.is_dir():
        raise UserError(f"{data}: not a folder (give --nab the NAB root holding data/ and labels/)")
    groups = sorted(p.name for p in data.iterdir() if p.is_dir() and any(p.glob("*.csv")))
    if not groups:
        raise UserError(f"{data}: no group folders with .csv files")
    return groups


def data_root(nab: Path, groups: list[str], all_groups: list[str], tmp: Path) -> Path:
    """`<nab>/data`, or a temporary folder of symbolic links to the chosen groups' files."""
    if groups == all_groups:
        return nab / "data"
    root = tmp / "data"
    for group in groups:
        (root / group).mkdir(parents=True, exist_ok=True)
        for csv in sorted((nab / "data" / group).glob("*.csv")):
            (root / group / csv.name).symlink_to(csv.resolve())
    return root


def compose(nab: Path, data: Path, overrides: list[str], out_dir: Path) -> Any:
    """The CLI's train config for `task=anomaly experiment=nab` (gru_suite.testing.compose_train_config)."""
    from gru_suite.testing import compose_train_config

    base = [
        "experiment=nab",
        f"task.data.path={quote(data)}",
        f"task.data.windows_path={quote(nab / 'labels' / 'combined_windows.json')}",
        "logger=none",
        "callbacks.progress_bar=null",
        "predict_after_training=false",
    ]
    return compose_train_config("anomaly", [*base, *overrides], out_dir)


# --------------------------------------------------------------------------- NAB helpers


def nab_by_group(flags: dict[str, np.ndarray], windows: dict[str, list], profile: str) -> dict[str, Any]:
    """Normalised NAB score over all files and per group, plus raw score and FP count per group."""
    from gru_suite_plugins.anomaly.scoring import nab_score

    out: dict[str, Any] = {}
    groups = sorted({_group(n) for n in flags})
    for key, names in [("all", list(flags)), *[(g, [n for n in flags if _group(n) == g]) for g in groups]]:
        result = nab_score({n: flags[n] for n in names}, None, {n: windows[n] for n in names}, profile)
        out[key] = {
            "normalized": result.normalized,
            "raw": result.raw,
            "null": result.null,
            "perfect": result.perfect,
            "fp": sum(s.fp for s in result.per_file.values()),
        }
    return out


def _point_weights(length: int, windows: list[tuple[int, int]], profile: str):
    """Per row: the NAB sweep score it adds when detected (`scoring.nab_row_scores`), its window (-1 outside)
    and whether it is scored; and the windows that are scored."""
    from gru_suite_plugins.anomaly.scoring import NAB_PROFILES, nab_probationary_length, nab_row_scores

    scored = np.arange(length) >= nab_probationary_length(length)
    win = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    window_id = np.full(length, -1)
    for k, (start, end) in enumerate(win):
        window_id[start : end + 1] = k
    live_windows = [k for k, (_, end) in enumerate(win) if scored[end]]
    return nab_row_scores(length, win, NAB_PROFILES[profile]), window_id, scored, live_windows


def tune_threshold(scores: dict[str, np.ndarray], windows: dict[str, list], profile: str) -> dict[str, Any]:
    """The one global threshold t (flags = score >= t) maximising the corpus NAB score of `profile`.

    Exact sweep over every distinct post-probation score: sorting all scored rows by score,
    each row adds its false-positive weight, or raises its window's part to the running max of
    its true-positive weights (the earliest detection wins; NAB's calcScoreByThreshold)."""
    from gru_suite_plugins.anomaly.scoring import NAB_PROFILES, nab_score

    cost = NAB_PROFILES[profile]
    values, gains, wid = [], [], []
    n_live, offset = 0, 0
    for name, score in scores.items():
        weight, window_id, scored, live = _point_weights(len(score), windows[name], profile)
        n_live += len(live)
        keep = scored & ((window_id < 0) | np.isin(window_id, live))
        values.append(score[keep])
        gains.append(weight[keep])
        wid.append(np.where(window_id[keep] >= 0, window_id[keep] + offset, -1))
        offset += len(windows[name])
    values, gains, wid = np.concatenate(values), np.concatenate(gains), np.concatenate(wid)
    order = np.argsort(-values, kind="stable")
    values, gains, wid = values[order], gains[order], wid[order]
    increment = np.where(wid < 0, gains, 0.0)
    best_part: dict[int, float] = {}
    for j in np.flatnonzero(wid >= 0):  # running max of each window's part, starting at -fn
        w = int(wid[j])
        old = best_part.get(w, -cost.fn)
        if gains[j] > old:
            increment[j] = gains[j] - old
            best_part[w] = float(gains[j])
    total = -cost.fn * n_live + np.cumsum(increment)
    last_of_tie = np.flatnonzero(np.r_[values[1:] != values[:-1], True])  # flags = score >= values[j]
    candidates = np.r_[-cost.fn * n_live, total[last_of_tie]]
    thresholds = np.r_[np.inf, values[last_of_tie]]
    if values.size and np.isposinf(values[0]):  # rows the range check flags: no threshold leaves them unflagged
        candidates, thresholds = candidates[1:], thresholds[1:]
    k = int(np.argmax(candidates))
    threshold = float(thresholds[k])
    flags = {n: s >= threshold for n, s in scores.items()}
    check = nab_score(flags, None, windows, profile)
    raw_sweep = float(candidates[k])
    if not math.isclose(check.raw, raw_sweep, rel_tol=1e-9, abs_tol=1e-9):
        raise AssertionError(f"threshold sweep {raw_sweep} != nab_score {check.raw} at {threshold} ({profile})")
    return {"threshold": threshold, "raw": check.raw, "normalized": check.normalized,
            "candidates": int(len(thresholds)), "flags": flags}


# --------------------------------------------------------------------------- sections


def train(cfg: Any, seed: int) -> dict[str, Any]:
    import torch

    fitted = fit_and_test(cfg, seed)
    clock, datamodule, module = fitted.clock, fitted.datamodule, fitted.module
    return {
        "task": fitted.task,
        "module": module,
        "datamodule": datamodule,
        "result": {
            "epochs_run": int(fitted.trainer.current_epoch),
            "best_epoch": fitted.best_epoch,
            "best_val_loss": fitted.best_val_loss,
            "val_loss_per_epoch": clock.val_loss,
            "train_s_per_epoch": float(np.median(clock.wall)) if clock.wall else None,
            "train_cpu_s_per_epoch": float(np.median(clock.cpu)) if clock.cpu else None,
            "fit_wall_s": fitted.fit_wall_s,
            "fit_cpu_s": fitted.fit_cpu_s,
            "task_test_wall_s": fitted.test_wall_s,
            "params": sum(p.numel() for p in module.model.parameters()),
            "train_crops": len(datamodule.sets["train"]),
            "val_crops": len(datamodule.sets["val"]),
            "batches_per_epoch": len(datamodule.train_dataloader()),
            "threads": torch.get_num_threads(),
        },
        "task_test_metrics": fitted.test_metrics,
    }


def test_stage_scoring(task: Any, test_wall_s: float) -> tuple[dict[str, Any], dict[str, float]]:
    """The series the task's test stage scored (raw scores with its periodic retraining, then its flagger), by
    name, and their seconds: the stage's wall time, of which the flagger's share is timed again here on the raw
    scores it kept (the flags must come out the same)."""
    scored = task.test_scored
    if missing := [s.name for s in task.streams if s.name not in scored]:
        raise RuntimeError(f"the task's test stage scored no {missing}")
    flag_s = []
    for stream in task.streams:
        start = time.perf_counter()
        again = task.flagger().run(scored[stream.name].raw, stream.probation, stream.series.values)
        flag_s.append(time.perf_counter() - start)
        if not np.array_equal(again.flags, scored[stream.name].flags):
            raise RuntimeError(f"{stream.name}: the flagger gave other flags on the same raw scores")
    rows = sum(len(s.series.values) for s in task.streams)
    return scored, {
        "series": len(task.streams),
        "rows": rows,
        "s_per_series": test_wall_s / len(task.streams),
        "model_s_per_series": (test_wall_s - sum(flag_s)) / len(task.streams),
        "flagger_s_per_series": float(np.mean(flag_s)),
        "total_s": test_wall_s,
        "points_per_s": rows / test_wall_s,
    }


def label_free(task: Any, scored: dict[str, Any]) -> dict[str, Any]:
    from gru_suite_plugins.anomaly.scoring import evaluate_flags, nab_score

    streams = {s.name: s for s in task.streams if s.windows is not None}
    flags = {n: scored[n].flags for n in streams}
    windows = {n: streams[n].windows for n in streams}
    nab = {p: nab_by_group(flags, windows, p) for p in PROFILES}
    per_series: dict[str, dict[str, Any]] = {}
    std = nab_score(flags, None, windows, "standard").per_file
    for name, stream in streams.items():
        m = evaluate_flags(flags[name], stream.labels())
        hit = sum(bool(flags[name][a : b + 1].any()) for a, b in stream.windows)
        per_series[name] = {
            "rows": len(stream.series.values), "probation": stream.probation, "windows": len(stream.windows),
            "flags": int(flags[name].sum()), "windows_hit": hit, "point_f1": m["point_f1"],
            "event_f1": m["event_f1"], "pa_f1": m["pa_f1"], "nab_standard_raw": std[name].raw,
            "threshold": scored[name].threshold,
        }
    f1: dict[str, dict[str, float]] = {}
    groups = sorted({_group(n) for n in streams})
    for key, names in [("all", list(streams)), *[(g, [n for n in streams if _group(n) == g]) for g in groups]]:
        with_anomalies = [n for n in names if streams[n].windows]
        entry = {k: float(np.mean([per_series[n][k] for n in with_anomalies])) if with_anomalies else math.nan
                 for k in ("point_f1", "event_f1", "pa_f1")}
        entry["series_with_anomalies"] = len(with_anomalies)
        f1[key] = entry
    return {"nab": nab, "f1": f1, "per_series": per_series}


def published_detectors(files: Sequence[str], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """NAB's published detectors scored on `files`: their per-file raw scores (thresholds NAB tuned on the labels
    of all 58 files) summed over all the files and over each group's, normalised with the null and perfect scores
    in `baselines` (profile -> "all" or group -> {"null", "perfect"}, as `nab_by_group` gives them for these files).
    None for a sum that would need a file the published table lacks."""
    import pandas as pd

    published = pd.read_csv(PUBLISHED_SCORES).set_index(["profile", "file"])
    groups = sorted({_group(n) for n in files})
    keys = [("all", list(files)), *[(g, [n for n in files if _group(n) == g]) for g in groups]]
    out: dict[str, Any] = {}
    for column, name in PUBLISHED.items():
        out[name] = {}
        for profile in PROFILES:
            by_key: dict[str, float | None] = {}
            for key, names in keys:
                rows = [(profile, n) for n in names]
                if key not in baselines[profile] or not all(r in published.index for r in rows):
                    by_key[key] = None
                    continue
                raw = float(published.loc[rows, column].sum())
                null, perfect = baselines[profile][key]["null"], baselines[profile][key]["perfect"]
                by_key[key] = 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan
            out[name][profile] = by_key
    return out


def label_tuned(task: Any, scored: dict[str, Any]) -> dict[str, Any]:
    """One threshold per profile tuned on the labels; rows the range check flags stay flagged. The
    cooldown is not applied: the exact sweep needs flags that only grow as the threshold falls."""
    streams = {s.name: s for s in task.streams if s.windows is not None}
    scores = {}
    for name in streams:
        series = scored[name]
        beyond = series.beyond_range
        scores[name] = series.score if beyond is None else np.where(beyond, np.inf, series.score)
    windows = {n: streams[n].windows for n in streams}
    out = {}
    for profile in PROFILES:
        tuned = tune_threshold(scores, windows, profile)
        out[profile] = {
            "threshold": tuned["threshold"],
            "candidates": tuned["candidates"],
            "nab": nab_by_group(tuned["flags"], windows, profile),
        }
    return out


def streaming(task: Any, model: Any, nab: Path, name: str, cfg: Any, scored: dict[str, Any]) -> dict[str, Any]:
    """Throughput of AnomalyStream.update over one series, timed after its probationary period."""
    from gru_suite.timeseries import read_series_csv

    known = {s.name: s for s in task.streams}
    if name in known:
        series, probation = known[name].series, known[name].probation
    else:
        d = cfg.task.data
        series = read_series_csv(nab / "data" / name, None, d.time_column, d.get("missing", "interpolate"))
        probation = min(int(d.probation * len(series.values)), d.probation_max)
    stream = task.stream(model, probation)
    rows = list(zip(series.values, series.timestamps))
    out = [stream.update(row, stamp) for row, stamp in rows[:probation]]
    rest = rows[probation:]
    wall, cpu = time.perf_counter(), time.process_time()
    for row, stamp in rest:
        out.append(stream.update(row, stamp))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {
        "series": name, "rows": len(rows), "probation": probation, "timed_points": len(rest),
        "wall_s": wall, "points_per_s": len(rest) / wall, "us_per_point": 1e6 * wall / len(rest),
        "cpu_us_per_point": 1e6 * cpu / len(rest),
    }
    if name in scored:  # streaming must equal batch scoring (the task's promise)
        batch = scored[name]
        result["flags_equal_batch"] = bool(np.array_equal(np.array([f for _, f in out]), batch.flags))
        result["max_abs_score_diff_vs_batch"] = float(np.max(np.abs(np.array([s for s, _ in out])[probation:]
                                                                     - batch.score[probation:])))
    return result


# --------------------------------------------------------------------------- printing


def _f1_cell(entry: dict[str, float] | None, key: str) -> str:
    if entry is None:
        return "-"
    mean = entry[key]
    return "-" if math.isnan(mean) else f"{mean:.3f}"


def _nab_cell(nab: dict[str, Any], column: str, key: str) -> Any:
    """One group's (or "all"'s) NAB figure, "-" for a group none of whose series has labelled windows."""
    return nab[column][key] if column in nab else "-"


def print_report(report: dict[str, Any], groups: list[str]) -> None:
    tr, cfg = report["training"], report["config"]
    table(
        f"training: {cfg['detector']} detector, hidden {cfg['hidden_size']}, crop {cfg['crop_length']}, "
        f"batch {cfg['batch_size']}, {tr['threads']} thread(s); overrides: {' '.join(cfg['overrides']) or '(none)'}",
        ["epochs", "best epoch (from 0)", "best val/loss", "train s/epoch", "train CPU s/epoch", "fit s (wall)",
         "fit CPU s", "params", "crops", "batches/epoch"],
        [[tr["epochs_run"], tr["best_epoch"], tr["best_val_loss"], tr["train_s_per_epoch"],
          tr["train_cpu_s_per_epoch"], tr["fit_wall_s"], tr["fit_cpu_s"], tr["params"], tr["train_crops"],
          tr["batches_per_epoch"]]],
    )
    lf = report["label_free"]
    cols = ["all", *groups]
    scoring = cfg["scoring"]
    table(
        f"label-free NAB score (normalised; threshold {scoring}) - NOT the leaderboard protocol",
        ["profile", *cols],
        [[p, *[_nab_cell(lf["nab"][p], c, "normalized") for c in cols]] for p in PROFILES]
        + [["FP (standard)", *[_nab_cell(lf["nab"]["standard"], c, "fp") for c in cols]],
           ["raw (standard)", *[_nab_cell(lf["nab"]["standard"], c, "raw") for c in cols]]],
    )
    table(
        "label-free F1: mean over series with anomaly windows (the task's test metric)",
        ["metric", *cols],
        [[k, *[_f1_cell(lf["f1"].get(c), k) for c in cols]] for k in ("point_f1", "event_f1", "pa_f1")]
        + [["series with windows", *[lf["f1"].get(c, {}).get("series_with_anomalies", 0) for c in cols]]],
    )
    ps = lf["per_series"]
    table(
        "per series (label-free flags)",
        ["series", "rows", "probation", "windows", "hit", "flags", "point F1", "event F1", "PA F1", "NAB std raw"],
        [[n, v["rows"], v["probation"], v["windows"], v["windows_hit"], v["flags"], v["point_f1"], v["event_f1"],
          v["pa_f1"], v["nab_standard_raw"]] for n, v in ps.items()],
    )
    check = report["task_test_check"]
    agrees = ("n/a (no labelled windows to score)" if check["agrees"] is None
              else f"{check['agrees']} (max |diff| {check['max_abs_diff']:.2g})")
    print(f"this report's totals, recomputed from the test stage's flags, equal the metrics it logged: {agrees}; "
          f"{PROTOCOL_NOTE}")
    if "label_tuned" in report:
        lt = report["label_tuned"]
        rows = []
        for p in PROFILES:
            t = lt[p]["threshold"]
            shown = ("-" if not math.isfinite(t)  # no live window to tune on
                     else f"{t:.6g}" if cfg["score"] != "likelihood" or t >= 1 else f"1-{1 - t:.3g}")
            rows.append([p, shown, *[_nab_cell(lt[p]["nab"], c, "normalized") for c in cols]])
        table(
            f"label-tuned threshold (NAB leaderboard protocol): one global threshold on the {cfg['score']} score "
            "per profile, chosen on these labels",
            ["profile", "threshold", *cols],
            rows,
        )
        board = ", ".join(f"{k} {v}" for k, v in LEADERBOARD.items())
        print(f"leaderboard (standard, full 58-file NAB): {board}; this corpus: {report['corpus']['files']} files in "
              f"{len(groups)} groups ({', '.join(groups)}), so only indicative; the next table scores NAB's published "
              "detectors on these files.")
    print_published(report, groups)
    sc, st = report["scoring"], report.get("streaming")
    rows = [["test stage (model + flagger)", sc["s_per_series"], sc["model_s_per_series"],
             sc["flagger_s_per_series"], sc["points_per_s"], f"{sc['series']} series, {sc['rows']:,} rows"]]
    if st:
        same = st.get("flags_equal_batch")
        rows.append([f"AnomalyStream.update ({st['series']})", "", "", "", st["points_per_s"],
                     f"{st['us_per_point']:.1f} us/pt, {st['cpu_us_per_point']:.1f} CPU us/pt, "
                     f"{st['timed_points']:,} pts"
                     + ("" if same is None else f", == batch: {same}")])
    table("speed", ["what", "s/series", "model s/series", "flagger s/series", "points/s", "notes"], rows)


def _score_cell(value: float | None) -> Any:
    return "-" if value is None or not math.isfinite(value) else value


def print_published(report: dict[str, Any], groups: list[str]) -> None:
    """NAB's published detectors beside this run's detector, on the same files and windows."""
    ours = {"GRU Suite, label-free (this run)": report["label_free"]["nab"]}
    if "label_tuned" in report:
        ours["GRU Suite, label-tuned (this run)"] = {p: report["label_tuned"][p]["nab"] for p in PROFILES}
    rows = [[name, *[_score_cell(by[p]["all"]) for p in PROFILES],
             *[_score_cell(by["standard"].get(g)) for g in groups]] for name, by in report["published"].items()]
    rows += [[name, *[_score_cell(nab[p]["all"]["normalized"]) for p in PROFILES],
              *[_score_cell(nab["standard"].get(g, {}).get("normalized")) for g in groups]]
             for name, nab in ours.items()]
    table("NAB's published detectors on these files: their per-file raw scores (numenta/NAB results/, thresholds "
          "NAB tuned on all 58 files' labels), summed and normalised over these files' windows",
          ["detector", *PROFILES, *[f"{g} (standard)" for g in groups]], rows)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nab", required=True,
                        help="NAB root holding data/<group>/*.csv and labels/combined_windows.json")
    parser.add_argument("--overrides", default=DEFAULT_OVERRIDES,
                        help=f"Hydra overrides on top of experiment=nab, one string (default: {DEFAULT_OVERRIDES!r}; "
                             "pass '' for the yaml as it is)")
    parser.add_argument("--groups", default="", help="comma-separated NAB groups to train and score (default: all)")
    parser.add_argument("--stream-series", default=DEFAULT_STREAM_SERIES,
                        help="series for the streaming throughput, relative to data/ "
                             f"(default {DEFAULT_STREAM_SERIES}; '' skips it)")
    parser.add_argument("--no-tuned", action="store_true", help="skip the label-tuned (leaderboard protocol) section")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the config's seed)")
    parser.add_argument("--out-dir", default=None, help="keep the run folder (checkpoints) here; default: temporary")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import pytorch_lightning as pl  # its import sets its loggers to INFO: quieten afterwards
    import torch

    from omegaconf import OmegaConf

    from gru_suite.errors import UserError

    quiet()
    torch.set_num_threads(args.threads)
    overrides = shlex.split(args.overrides)
    nab = Path(args.nab).resolve()
    start = time.perf_counter()
    try:
        all_groups = nab_groups(nab)
        groups = [g.strip() for g in args.groups.split(",") if g.strip()] or all_groups
        unknown = sorted(set(groups) - set(all_groups))
        if unknown:
            raise UserError(f"unknown groups {unknown}; {nab / 'data'} holds {all_groups}")
        groups = sorted(groups)
        if args.stream_series and not (nab / "data" / args.stream_series).is_file():  # checked before the work
            missing = nab / "data" / args.stream_series
            if args.stream_series != DEFAULT_STREAM_SERIES:
                raise UserError(f"--stream-series: no {missing}")
            print(f"note: no {missing}: streaming throughput skipped (--stream-series names another series)",
                  file=sys.stderr)
            args.stream_series = ""
        with tempfile.TemporaryDirectory(prefix="gru_suite_anomaly_bench_") as scratch:
            tmp = Path(scratch)
            out_dir = Path(args.out_dir).resolve() if args.out_dir else tmp / "run"
            cfg = compose(nab, data_root(nab, groups, all_groups, tmp), overrides, out_dir)
            seed = cfg.seed if args.seed is None else args.seed
            trained = train(cfg, seed)
            task, model = trained["task"], trained["module"].model
            if unlabelled := [s.name for s in task.streams if s.windows is None]:
                print(f"warning: {len(unlabelled)} series have no entry in the labels and are left out of the NAB "
                      f"scores and F1s (their seconds count): {', '.join(unlabelled)}", file=sys.stderr)
            scored, scoring = test_stage_scoring(task, trained["result"]["task_test_wall_s"])
            report: dict[str, Any] = {
                "meta": {"torch": torch.__version__, "pytorch_lightning": pl.__version__,
                         "python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": args.threads,
                         "argv": sys.argv[1:] if argv is None else list(argv), "seed": seed,
                         "protocol_note": PROTOCOL_NOTE},
                "config": {
                    "overrides": overrides, "groups": groups, "detector": cfg.task.detector.kind,
                    "hidden_size": int(cfg.backbone.hidden_size), "crop_length": int(cfg.task.data.crop_length),
                    "batch_size": int(cfg.task.data.batch_size), "max_epochs": int(cfg.trainer.max_epochs),
                    "score": cfg.task.scoring.score,
                    "scoring": (f"{cfg.task.scoring.score}/{cfg.task.scoring.threshold}"
                                + (f" {cfg.task.scoring.fixed}" if cfg.task.scoring.threshold == "fixed" else "")),
                    "task_scoring": OmegaConf.to_container(cfg.task.scoring),
                },
                "corpus": {"files": len(task.streams),
                           "labelled_files": sum(s.windows is not None for s in task.streams),
                           "windows": sum(len(s.windows or []) for s in task.streams)},
                "training": trained["result"],
                "task_test_metrics": trained["task_test_metrics"],
                "scoring": scoring,
            }
            report["label_free"] = label_free(task, scored)
            mine = {f"test/nab_{p}": report["label_free"]["nab"][p]["all"]["normalized"] for p in PROFILES}
            mine.update({f"test/{k}": report["label_free"]["f1"]["all"][k]
                         for k in ("point_f1", "event_f1", "pa_f1")})
            diffs = [abs(v - trained["task_test_metrics"][k]) for k, v in mine.items()
                     if k in trained["task_test_metrics"] and math.isfinite(v)]
            report["task_test_check"] = {"agrees": max(diffs) < 1e-4 if diffs else None,
                                         "max_abs_diff": max(diffs) if diffs else math.nan}
            if not args.no_tuned:
                report["label_tuned"] = label_tuned(task, scored)
            report["published"] = published_detectors(
                list(report["label_free"]["per_series"]), report["label_free"]["nab"])
            if args.stream_series:
                report["streaming"] = streaming(task, model, nab, args.stream_series, cfg, scored)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["meta"]["wall_s"] = time.perf_counter() - start
    report["meta"]["cpu_s"] = time.process_time()
    try:
        print_report(report, groups)
        print(f"[total {report['meta']['wall_s']:.1f} s wall, {report['meta']['cpu_s']:.1f} s CPU]")
    finally:  # a long run's figures survive a fault in the tables
        print(json.dumps(clean(report), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
