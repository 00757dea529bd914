"""Atomic file writes: an artifact is either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gru_suite.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>.*)")
"""The name of `atomic_path`'s temporary file: `.<name>.<mkstemp's 8 random characters><name's suffix>` (the name's
stem cut short where the whole would pass `NAME_MAX`; `.tmp.<8 characters>` where its suffix alone would)."""
NAME_MAX = 255
"""The most bytes a file name may have (ext4, XFS, btrfs, tmpfs and most others)."""


def unfinished_writes(folder: Path) -> list[Path]:
    """The temporary files of `atomic_path` writes into `folder` that a killed process left behind (any process
    still writing there would be cut short: call it where no other is)."""
    found = [(path, _TEMPORARY.fullmatch(path.name)) for path in Path(folder).glob(".*") if path.is_file()]
    return sorted(path for path, match in found if match and Path(match["name"]).suffix == match["suffix"])


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success flush it to disk and rename it onto `path`.

    On error the temporary file is removed and `path` keeps its old content (an OSError that names no file, a full
    disk, is raised again naming `path`); flushed before the rename, a power cut cannot leave `path` renamed onto data
    still in the page cache (an empty file on ext4 and others). A folder in the way, at `path` or among its parents,
    is a UserError naming it.
    """
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target} is a folder: cannot write the file of that name")
    _make_folder(target.parent, target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, **_temporary_affixes(target))
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0o600, as a plain open() would create it
        yield Path(tmp)
        _flush_to_disk(tmp)
        os.replace(tmp, target)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(target)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temporary_affixes(target: Path) -> dict[str, str]:
    """mkstemp's prefix and suffix for `target`: `.<target's name>.` and its suffix (which writers read the format
    from), the stem cut short (whole characters) where the temporary name would pass `NAME_MAX`; `.tmp.` and none
    where no letter of the stem fits beside the suffix twice."""
    suffix = target.suffix
    room = NAME_MAX - len(f"..12345678{suffix}{suffix}".encode())
    stem = cut_to_bytes(target.stem, room)
    if not stem:  # not a letter of it fits (a temporary name `.<suffix>.` would not read as one)
        return {"prefix": ".tmp.", "suffix": ""}
    return {"prefix": f".{stem}{suffix}.", "suffix": suffix}


def cut_to_bytes(text: str, size: int) -> str:
    """`text` cut to at most `size` bytes of UTF-8 (none for a size below 0), on a whole character: for file names."""
    return text.encode()[:max(size, 0)].decode("utf-8", "ignore")


def _make_folder(folder: Path, writing: Path) -> None:
    """`folder` and its parents made where missing; a file in the way is a UserError naming it and `writing`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocking = next((p for p in (folder, *folder.parents) if p.is_file()), folder)
        raise UserError(f"{blocking} is a file: cannot write {writing} inside it") from err


def _flush_to_disk(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write `frame` as CSV (its columns, not its index) atomically and return the path."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def write_files(folder: str | os.PathLike, save: Callable[[Path], Iterable[str | os.PathLike]]) -> list[Path]:
    """Let `save` write files into a temporary folder beside `folder` and return their paths (as
    `save_pretrained` does), then move each file it wrote there into `folder`, flushed to disk first (each file
    whole or absent, as `atomic_path` makes it); their paths in `folder`. A `save` that fails leaves `folder` as it
    was."""
    target = Path(folder)
    _make_folder(target.parent, target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        returned = dict.fromkeys(Path(name).resolve() for name in save(Path(tmp)))  # once each, in order
        written = [path for path in returned if path.parent == Path(tmp).resolve() and path.is_file()]
        _make_folder(target, target / (written[0].name if written else ""))
        for path in written:
            _flush_to_disk(str(path))
            os.replace(path, target / path.name)
    return [target / path.name for path in written]


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write one JSON object per line (UTF-8 as it is, not escaped) atomically, each as `records` yields it (a
    generator's records are never all held), and return the path."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


def save_figure(fig: Figure, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically, close it (if pyplot holds it), and return the path. Characters that the
    figure's fonts lack (a series named in Chinese, an emoji) give one warning naming them, not one per character."""
    with atomic_path(path) as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    _warn_again(caught, Path(path))
    if (pyplot := sys.modules.get("matplotlib.pyplot")) is not None:  # a plain Figure is held by no one
        pyplot.close(fig)
    return Path(path)


def _warn_again(caught: list[warnings.WarningMessage], path: Path) -> None:
    """Pass on the warnings of a figure's drawing, matplotlib's missing glyphs gathered into one."""
    missing: dict[str, set[str]] = {}
    for warning in caught:
        if glyph := _MISSING_GLYPH.fullmatch(str(warning.message)):
            missing.setdefault(glyph["fonts"], set()).add(chr(int(glyph["code"])))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    for fonts, characters in missing.items():
        warnings.warn(f"{path}: font(s) {fonts} have no glyph for {''.join(sorted(characters))!r}, drawn as empty "
                      "boxes (set matplotlib's font.family, e.g. in a matplotlibrc file, to a font that has them)",
                      UserWarning, stacklevel=3)


_MISSING_GLYPH = re.compile(r"Glyph (?P<code>\d+) \(.*\) missing from font\(s\) (?P<fonts>.+)\.")
"""matplotlib's warning for a character that the text's fonts lack (once per character and drawing)."""
