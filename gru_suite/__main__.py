"""`python -m gru_suite ...` is `gru-suite ...` (training), where the console scripts are not on the PATH."""

from gru_suite.cli import train

if __name__ == "__main__":
    train()
