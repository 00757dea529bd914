"""`gru-suite-anomaly-stream CKPT`: score observations read from stdin, one per line, as they arrive.

Each input line holds the values of one observation, comma-separated (a leading
timestamp is allowed with --timestamp, and required by a detector with calendar
features: a date, written as the checkpoint's task.data.time_format says if it is set,
or Unix time in its task.data.time_unit); each output
line is `score,flag` (`timestamp,score,flag` with --timestamp, the timestamp quoted as a CSV
file quotes a field with a comma), flushed at once; blank
lines are skipped, and so is a first line of column names (a CSV's header: a word a column).
A detector trained with task.data.missing=skip skips an observation with a missing value (an
empty field, or nan, na, n/a, null), answering `nan,0`. The first --probation observations fit
the scaler and calibrate the threshold.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO

from gru_suite.errors import UserError, excerpt

if TYPE_CHECKING:
    from gru_suite_plugins.anomaly.flagging import AnomalyStream

FLOAT32_MAX = 3.4028234663852886e38
"""The largest magnitude a value may have, as `gru_suite.timeseries.FLOAT32_MAX` (a file's cells); that module
imports torch, which `--help` does without."""


MISSING_WORDS = frozenset({"", "nan", "na", "n/a", "null"})
"""Fields read as a missing value (NaN) by a stream that skips them (case ignored)."""


def parse_line(line: str, number: int, has_timestamp: bool, width: int,
               skip_missing: bool = False) -> tuple[str | None, list[float]]:
    """The timestamp (with `has_timestamp`) and the `width` finite values of one input line; with `skip_missing`,
    a value may also be missing (NaN)."""
    if any("\udc80" <= char <= "\udcff" for char in line):  # bytes that are not UTF-8, as Python reads them
        raise UserError(f"stdin, line {number}: not UTF-8")
    fields = csv_fields(line)
    stamp = fields.pop(0) if has_timestamp else None
    expected = f"{'a timestamp and ' if has_timestamp else ''}{width} comma-separated finite number(s)"
    if stamp is not None and not _is_timestamp(stamp):
        raise UserError(f"stdin, line {number}: not a timestamp: {excerpt(stamp)}")
    try:
        values = [math.nan if skip_missing and f.lower() in MISSING_WORDS else float(f) for f in fields]
    except ValueError as err:
        raise UserError(f"stdin, line {number}: expected {expected}, got {excerpt(line.strip())}") from err
    allowed = (lambda v: math.isfinite(v) or math.isnan(v)) if skip_missing else math.isfinite
    if len(values) != width or not all(allowed(v) for v in values):
        raise UserError(f"stdin, line {number}: expected {expected}, got {excerpt(line.strip())}")
    if any(abs(v) > FLOAT32_MAX for v in values):  # as a file's cells: infinite as the 32-bit floats they become
        raise UserError(f"stdin, line {number}: expected numbers of at most {FLOAT32_MAX:.3g} in size (values are "
                        f"held as 32-bit floats), got {excerpt(line.strip())}")
    return stamp, values


def is_header(line: str, has_timestamp: bool, width: int) -> bool:
    """Whether `line` names the `width` value columns (`timestamp,value`): as many fields as a line of values, each
    a name (a letter or `_` first, as `csv_fields` unquotes it: not `10 C` or `$3.50`), none a missing value's
    word."""
    fields = csv_fields(line)[1 if has_timestamp else 0:]
    return len(fields) == width and all(COLUMN_NAME.fullmatch(f) and f.lower() not in MISSING_WORDS for f in fields)


COLUMN_NAME = re.compile(r"[^\W\d].*")
"""A column's name in a header line: a letter or `_` first."""


def csv_fields(line: str) -> list[str]:
    """The comma-separated fields of `line` as a CSV file's (a quoted one unquoted: `"2024-01-01 00:00"`), stripped."""
    return [field.strip() for field in next(csv.reader([line]), [""])]


def csv_line(*fields: str) -> str:
    """`fields` as one CSV record, without its line end (a field holding a comma or a quote quoted, as it was read:
    `"Mar 01, 2024 00:00",0.5,0`)."""
    record = io.StringIO()
    csv.writer(record, lineterminator="").writerow(fields)
    return record.getvalue()


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_timestamp(text: str) -> bool:
    """A date pandas reads, or a number (epoch seconds, say)."""
    import pandas as pd

    if _is_number(text):
        return True
    try:
        return not pd.isna(pd.Timestamp(text))
    except (ValueError, TypeError, OverflowError):
        return False


def score_lines(stream: AnomalyStream, lines: Iterable[str], has_timestamp: bool, width: int) -> Iterator[str]:
    """`score,flag` (prefixed by the timestamp when given) for each non-empty line of `width` values; a first
    line that `is_header` is skipped."""
    first = True
    for number, line in enumerate(lines, start=1):
        line = line.removeprefix("\ufeff") if number == 1 else line  # a byte-order mark, as files may start with
        if not line.strip():
            continue
        try:
            header, first = first and is_header(line, has_timestamp, width), False
            if header:
                print(f"stdin, line {number}: read as the column names {line.strip()!r}, not an observation",
                      file=sys.stderr)
                continue
            stamp, values = parse_line(line, number, has_timestamp, width, stream.skip_missing)
        except csv.Error as err:  # a line of a megabyte, say
            raise UserError(f"stdin, line {number}: not a line of comma-separated values ({err})") from err
        try:
            score, flag = stream.update(values, stamp)
        except UserError as err:
            raise UserError(f"stdin, line {number}: {err}") from err
        yield csv_line(*([stamp] if stamp else []), f"{score:.6g}", str(int(flag)))


LINE_END = re.compile(rb"\r\n|\r|\n")


def lines_as_they_come(stream: BinaryIO) -> Iterator[str]:
    """The lines of `stream`, each as soon as its end arrives: "\\n", "\\r\\n" or "\\r" alone (a serial device's,
    which Python's own reading holds back until the next byte shows whether "\\n" follows). Bytes that are not UTF-8
    come as surrogates (`parse_line` names them)."""
    pending, after_return = b"", False
    while chunk := stream.read1(1 << 16):
        if after_return and chunk.startswith(b"\n"):  # the rest of a "\r\n" already ended
            chunk = chunk[1:]
        after_return = chunk.endswith(b"\r")
        *lines, pending = LINE_END.split(pending + chunk)
        yield from (line.decode("utf-8", "surrogateescape") for line in lines)
    if pending:
        yield pending.decode("utf-8", "surrogateescape")


def main(argv: list[str] | None = None) -> int:
    """`gru-suite-anomaly-stream`: each observation on stdin scored and flagged on stdout as it comes; the exit
    code (2: bad input, named on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path", help="an anomaly checkpoint written by `gru-suite task=anomaly`")
    parser.add_argument("--probation", type=int, default=300, help="observations learned from before flagging")
    parser.add_argument("--timestamp", action="store_true",
                        help="each line starts with a timestamp (required by a detector with calendar features)")
    args = parser.parse_args(argv)
    if args.probation < 2:
        parser.error(f"--probation must be at least 2 observations, got {args.probation}")
    try:
        from gru_suite.checkpoint import load_checkpoint

        module = load_checkpoint(args.ckpt_path)
        if not hasattr(module.task, "flagger"):
            raise UserError(f"{args.ckpt_path}: holds a {module.task.cfg.name!r} model, not an anomaly detector")
        if (kinds := list(module.task.calendar.kinds)) and not args.timestamp:
            raise UserError(f"{args.ckpt_path}: its detector reads calendar features {kinds}; "
                            "start each line with its timestamp and pass --timestamp")
        stream = module.task.stream(module.model, args.probation)
        lines = lines_as_they_come(sys.stdin.buffer) if hasattr(sys.stdin, "buffer") else sys.stdin
        for out in score_lines(stream, lines, args.timestamp, module.task.state["n_features"]):
            print(out, flush=True)
        if (seen := stream.observations) <= args.probation:
            print(f"warning: the stream ended after {seen} observation(s), within the probationary period of "
                  f"{args.probation} (--probation): no observation came after it, so none could be flagged",
                  file=sys.stderr)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
