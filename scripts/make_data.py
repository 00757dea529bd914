"""Write the bundled default data into data/ (deterministic: same bytes every run).

    python scripts/make_data.py            # every dataset
    python scripts/make_data.py forecasting
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import numpy as np
import pandas as pd

from gru_suite.atomic import atomic_path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def demo_load(hours: int = 2400, seed: int = 7) -> pd.DataFrame:
    """Hourly electricity-like load: daily and weekly cycles, a slow trend, and a
    temperature driver with its own daily cycle and weather fronts, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    day = 2 * np.pi * t / 24
    fronts = np.convolve(rng.normal(0, 1.0, hours), np.ones(72) / 72 ** 0.5, mode="same")
    temperature = 12 + 6 * np.sin(day - 2.0) + 3 * fronts + rng.normal(0, 0.5, hours)
    weekday = ((t // 24) % 7 < 5).astype(float)
    load = (
        100
        + 25 * np.sin(day - 1.2) + 8 * np.sin(2 * day)
        + 12 * weekday
        + 0.01 * t
        + 1.5 * np.abs(temperature - 15)
        + rng.normal(0, 2.0, hours)
    )
    stamps = pd.date_range("2024-01-01", periods=hours, freq="h")
    return pd.DataFrame({
        "timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"),
        "load": load.round(3),
        "temperature": temperature.round(3),
    })


def _seasonal_series(rng: np.random.Generator, n: int, period: int) -> np.ndarray:
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * t / period) + np.sin(2 * np.pi * t / (period / 4)) + rng.normal(0, 0.3, n)


def anomaly_series(n: int = 2000, seed: int = 11) -> tuple[dict[str, pd.DataFrame], dict[str, list[list[str]]]]:
    """Four hourly series, each with anomalies of one kind injected after the first 20%:
    spikes, a level shift, a change of seasonality, and a flat-lined sensor.
    Returns the frames and their anomaly windows in NAB's combined_windows.json layout."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2024-03-01", periods=n, freq="h")
    frames, windows = {}, {}
    for kind in ("spikes", "level_shift", "seasonality_change", "flatline"):
        values = _seasonal_series(rng, n, period=24)
        events = []
        if kind == "spikes":
            for at in (700, 1150, 1600):
                values[at] += rng.choice([-1, 1]) * rng.uniform(5, 7)
                events.append((at, at))
        elif kind == "level_shift":
            values[1100:1300] += 4.0
            events += [(1100, 1100), (1300, 1300)]
        elif kind == "seasonality_change":
            t = np.arange(900, 1100)
            values[900:1100] = 10 + 3 * np.sin(2 * np.pi * t / 8) + rng.normal(0, 0.3, len(t))
            events.append((900, 1099))
        else:
            values[1200:1320] = values[1200]
            events.append((1200, 1319))
        name = f"{kind}.csv"
        frames[name] = pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"), "value": values.round(4)})
        half = 10  # NAB-style windows centred on each event
        windows[name] = [
            [str(stamps[max(a - half, 0)]) + ".000000", str(stamps[min(b + half, n - 1)]) + ".000000"]
            for a, b in events
        ]
    return frames, windows


def anomaly_files() -> dict[str, object]:
    frames, windows = anomaly_series()
    return {**frames, "windows.json": json.dumps(windows, indent=2) + "\n"}


def plugin_files(task: str) -> Callable[[], dict[str, object]]:
    """The generator a task plugin ships beside its code: `gru_suite_plugins.<task>.synth.corpus_files`."""
    return lambda: import_module(f"gru_suite_plugins.{task}.synth").corpus_files()


GENERATORS = {
    "forecasting": lambda: {"demo_load.csv": demo_load()},
    "anomaly": anomaly_files,
    **{task: plugin_files(task) for task in ("music", "speech", "translation", "sentiment")},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="*", metavar="TASK",
                        help=f"datasets to write, of {', '.join(GENERATORS)} (default: all)")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="data folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if unknown := [task for task in args.tasks if task not in GENERATORS]:
        parser.error(f"no dataset named {', '.join(unknown)}: choose from {', '.join(GENERATORS)}")
    for task in args.tasks or GENERATORS:
        folder = args.out / task
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in GENERATORS[task]().items():
            with atomic_path(folder / name) as tmp:  # a temporary name of its own: two runs at once do not clash
                if isinstance(content, pd.DataFrame):
                    content.to_csv(tmp, index=False)
                elif isinstance(content, bytes):
                    tmp.write_bytes(content)
                else:
                    tmp.write_text(content)
            print(folder / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
