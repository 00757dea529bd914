"""Anomaly detection task: GRU detectors that score streams online."""
