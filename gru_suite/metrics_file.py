"""The final-metrics JSON files (`metrics.json`, `test_metrics.json`): strict JSON, a metric that is not a finite
number (a diverged loss, say) written as null and read back as NaN."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from gru_suite.atomic import write_text

log = logging.getLogger(__name__)


def write_metrics(metrics: dict[str, Any], path: Path) -> Path:
    """Write `metrics` (names to numbers) to `path` atomically, sorted by name; NaN and infinities as null."""
    numbers = {name: float(value) for name, value in metrics.items()}
    clean = {name: value if math.isfinite(value) else None for name, value in numbers.items()}
    written = write_text(path, json.dumps(clean, indent=2, sort_keys=True) + "\n")
    log.info("metrics written to %s", written)
    return written


def read_metrics(path: Path) -> dict[str, float]:
    """The metrics `write_metrics` wrote to `path`, null as NaN."""
    return {name: math.nan if value is None else float(value)
            for name, value in json.loads(path.read_text(encoding="utf-8")).items()}
