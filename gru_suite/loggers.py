"""Lightning's CSV logger with every rewrite of `metrics.csv` a whole new file renamed onto it."""

from __future__ import annotations

import csv
import os

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from gru_suite.atomic import atomic_path


class AtomicExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, but when a column appears (the first validation, the learning rate, the test) the
    rows so far and the new ones go to a temporary file that replaces `metrics.csv`: Lightning's empties the file
    and writes it again in place, so a kill at that moment left an empty `metrics.csv`. Other saves append, as
    Lightning's do (a kill then can cut the last row short, never lose the earlier ones)."""

    def save(self) -> None:
        if not self.metrics:
            return
        if "://" in self.metrics_file_path:  # remote storage: Lightning's own writes
            super().save()
            return
        self._record_new_keys()
        if self._file_columns() == self.metrics_keys:
            with open(self.metrics_file_path, "a", newline="") as file:
                csv.DictWriter(file, fieldnames=self.metrics_keys).writerows(self.metrics)
        else:
            rows: list[dict[str, str]] = []
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as file:
                    rows = list(csv.DictReader(file))
            with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows + self.metrics)
        self.metrics = []

    def _file_columns(self) -> list[str] | None:
        """The header of `metrics.csv` as it is on disk (None without one): a save that failed after Lightning
        recorded a new column left the file without it."""
        if not os.path.isfile(self.metrics_file_path):
            return None
        with open(self.metrics_file_path, newline="") as file:
            return next(csv.reader(file), None)


class AtomicCSVLogger(CSVLogger):
    """`pytorch_lightning.loggers.CSVLogger` writing `metrics.csv` through `AtomicExperimentWriter`."""

    @property
    @rank_zero_experiment  # other DDP processes get a writer that does nothing, as with Lightning's
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AtomicExperimentWriter(log_dir=self.log_dir)
        return self._experiment
