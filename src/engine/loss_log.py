"""``losses.csv`` of a resumed run: drop what the interrupted run logged after the resumed step.

A run killed at step 16 with its last checkpoint at step 12 has logged steps 13-16; the resumed
run logs them again. Before it starts, ``drop_rows_after_step`` rewrites the file (atomically:
a temporary file in the same folder, fsync, rename) so the log, and the loss curve drawn from it,
continue from the resumed step with every step once.
"""

import csv
import io
import logging
import os

from src.config import ConfigError

logger = logging.getLogger(__name__)

STEP_COLUMN = "step"


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (a crash right after it keeps the new file)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_rows_after_step(csv_path: str, last_step: int) -> int:
    """Keep the header and the rows with ``step <= last_step``; rewrite the file atomically.

    Rows that are incomplete (a line cut by the kill) or whose step is not an integer are
    dropped as well. A missing file is left missing.

    Args:
        csv_path: ``RUN_DIR/losses.csv`` written by ``LossCallBack``.
        last_step: the global step the run resumes from (rows up to it are kept).

    Returns:
        The number of rows dropped (0: the file was not rewritten).

    Raises:
        ConfigError: the file exists but is not a loss log of train.py (no ``step`` column).
    """
    if not os.path.exists(csv_path):
        return 0
    with open(csv_path, newline="", encoding="utf-8") as handle:
        text = handle.read()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or STEP_COLUMN not in rows[0]:
        raise ConfigError(f"{csv_path}: not a losses.csv written by train.py (no '{STEP_COLUMN}' column); "
                          f"move it away or choose another run_dir")
    header, body = rows[0], rows[1:]
    step_index = header.index(STEP_COLUMN)
    kept = [row for row in body if len(row) == len(header) and row[step_index].isdigit()
            and int(row[step_index]) <= last_step]
    dropped = len(body) - len(kept)
    if not dropped and text.endswith("\n"):
        return 0
    tmp_path = f"{csv_path}.{os.getpid()}.tmp"
    try:
        with open(tmp_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, csv_path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    _fsync_directory(os.path.dirname(os.path.abspath(csv_path)))
    if dropped:
        logger.info("%s: dropped %d rows logged after step %d by the interrupted run", csv_path, dropped, last_step)
    return dropped
