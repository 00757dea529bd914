"""Time-series forecasting task."""
