"""Errors meant for the user: the CLI prints them as one line and exits non-zero."""


class UserError(ValueError):
    """Bad input or configuration; the message names the file or field and what was expected."""
