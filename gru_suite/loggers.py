"""Lightning's CSV logger with every write of `metrics.csv` a whole new file renamed onto it."""

from __future__ import annotations

import csv

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from gru_suite.atomic import atomic_path


class AtomicExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, but a save writes the rows so far and the new ones to a temporary file that replaces
    `metrics.csv`: Lightning's appends in place and, when a column appears (the first validation, the learning
    rate, the test), empties the file and writes it again, so a kill at that moment left an empty `metrics.csv`."""

    def save(self) -> None:
        if not self.metrics:
            return
        if "://" in self.metrics_file_path:  # remote storage: Lightning's own writes
            super().save()
            return
        self._record_new_keys()
        rows: list[dict[str, str]] = []
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                rows = list(csv.DictReader(file))
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows + self.metrics)
        self.metrics = []


class AtomicCSVLogger(CSVLogger):
    """`pytorch_lightning.loggers.CSVLogger` writing `metrics.csv` through `AtomicExperimentWriter`."""

    @property
    @rank_zero_experiment  # other DDP processes get a writer that does nothing, as with Lightning's
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AtomicExperimentWriter(log_dir=self.log_dir)
        return self._experiment
