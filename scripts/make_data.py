"""Write the bundled default data into data/ (deterministic: same bytes every run).

    python scripts/make_data.py            # every dataset
    python scripts/make_data.py forecasting
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

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


GENERATORS = {"forecasting": lambda: {"demo_load.csv": demo_load()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="*", help="datasets to write (default: all)")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="data folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for task in args.tasks or GENERATORS:
        folder = args.out / task
        folder.mkdir(parents=True, exist_ok=True)
        for name, frame in GENERATORS[task]().items():
            tmp = folder / f".{name}.tmp"
            frame.to_csv(tmp, index=False)
            tmp.replace(folder / name)
            print(folder / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
