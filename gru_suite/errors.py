"""Errors meant for the user: the CLI prints them as one line and exits non-zero; and the log of skipped input."""

from __future__ import annotations

import errno
import logging
import os

log = logging.getLogger(__name__)

SKIPS_NAMED = 5
"""Skipped items named one by one in the log; the rest are counted."""


def first_named(items: list, separator: str = ", ") -> str:
    """The first `SKIPS_NAMED` of `items` joined, and how many more there are: "a, b, c, d, e and 3 more"."""
    more = f" and {len(items) - SKIPS_NAMED} more" if len(items) > SKIPS_NAMED else ""
    return separator.join(map(str, items[:SKIPS_NAMED])) + more


def excerpt(value: object, limit: int = 80) -> str:
    """`value` as an error message shows it: its repr, cut to `limit` characters (a cell of a megabyte would make a
    message of one)."""
    text = repr(value)
    size = len(value) if isinstance(value, str) else len(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({size:,} characters)"


class UserError(ValueError):
    """Bad input or configuration; the message names the file or field and what was expected."""


class DivergedRun(UserError):
    """Training diverged and left no model to test: a sweep ranks the run as its worst, not as a failed job."""


def user_error_in(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`, also when OmegaConf wrapped one raised by a resolver."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__ or err.__context__
    return err


FILESYSTEM_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                               errno.EISDIR, errno.ENOTDIR, errno.EIO})
"""Errors of the file system a run reads and writes (no permission, read-only, full), not of the suite's code."""


def filesystem_error_in(err: BaseException | None, folder: str | os.PathLike) -> UserError | None:
    """A file-system failure (`FILESYSTEM_ERRNOS`) behind `err`, as one line naming its file, else `folder` (where
    the run writes)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FILESYSTEM_ERRNOS:
            where = err.filename if err.filename else f"writing in {folder}"
            return UserError(f"{where}: {err.strerror or os.strerror(err.errno)}")
        err = err.__cause__ or err.__context__
    return None


def not_a_file(path: str | os.PathLike, what: str = "file") -> UserError:
    """The error for a `path` that names no file: a folder, a broken link, something else than a file (a pipe), or
    nothing."""
    if os.path.isdir(path):
        return UserError(f"{path}: a folder, not a {what}")
    if os.path.islink(path) and not os.path.exists(path):
        return UserError(f"{path}: a broken link (to {os.readlink(path)}), not a {what}")
    if os.path.exists(path):
        return UserError(f"{path}: not a regular file (a pipe or a device), not a {what}")
    return UserError(f"{path}: no such {what}")


class Skips:
    """Input items skipped by a documented rule, logged as warnings: the first `SKIPS_NAMED` by where they are
    and why, then (`report`) how many in all."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0

    def add(self, where: str, why: str) -> None:
        self.count += 1
        if self.count <= SKIPS_NAMED:
            log.warning("%s: %s; skipped", where, why)

    def report(self, kept: int) -> None:
        if self.count > SKIPS_NAMED:
            log.warning("%s: skipped %d in all (%d kept)", self.source, self.count, kept)
