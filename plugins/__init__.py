"""Built-in GRU Suite tasks; each registers through the `gru_suite.tasks` entry point."""
