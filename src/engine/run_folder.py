"""One run per folder: the run lock of ``run_dir`` and the check that a new run starts in a fresh one.

``train.py`` takes the lock (:class:`RunLock`) before anything else: a second ``train.py`` in the
same folder, started at the same time or later while the first runs, is refused with one line. The
lock is a ``flock`` on ``run_dir/.train.lock`` holding the owner's process id: the kernel drops it
when its process dies, however it dies, so the lock of a killed run is taken over (with a line
naming the dead process) and never blocks a folder forever.

A run without ``--resume`` never writes into another run's files: a folder that holds any
(:func:`check_fresh_folder`) is refused with a line naming ``--resume`` and a fresh ``--run_dir``.
"""

import errno
import fcntl
import logging
import os
from typing import List, Optional

from src.checkpoint.io import CKPT_SUFFIX, PARTIAL_FILE, listing
from src.checkpoint.names import LAST_CHECKPOINT_NAME
from src.engine.runtime import SetupError

logger = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"
# What train.py writes in run_dir besides checkpoints (every *.ckpt counts too).
RUN_FILES = ("config.yaml", "losses.csv", "train.log")


class RunFolderError(SetupError):
    """``run_dir`` is in use by a live run, or holds another run's files (bad input: exit 2)."""


def run_files(run_dir: str) -> List[str]:
    """The names in ``run_dir`` that a train.py run wrote (not the leftovers of killed writes)."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n in RUN_FILES or (n.endswith(CKPT_SUFFIX) and not PARTIAL_FILE.match(n)))


def check_fresh_folder(run_dir: str) -> None:
    """A run without ``--resume`` must start in a folder without another run's files.

    Raises:
        RunFolderError: one line naming the files, ``--resume RUN_DIR/last.ckpt`` (when there is
            one) and a fresh ``--run_dir``.
    """
    found = run_files(run_dir)
    if not found:
        return
    last = os.path.join(run_dir, LAST_CHECKPOINT_NAME)
    resume = f"continue that run with --resume {last}, or " if LAST_CHECKPOINT_NAME in found else ""
    raise RunFolderError(f"{run_dir}: holds the files of an earlier run ({listing(found)}); {resume}start this "
                         f"one in a fresh folder with --run_dir NEW_FOLDER (a new run never writes into another "
                         f"run's files)")


def _read_owner(fd: int) -> Optional[int]:
    """The process id written in the lock file, or None (empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class RunLock:
    """The exclusive lock of one ``run_dir`` for the life of a run (a context manager).

    Args:
        run_dir: the folder; created if missing (and removed again on release if the run left
            nothing in it, e.g. refused input).
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._fd: Optional[int] = None
        self._created_folder = False

    def acquire(self) -> "RunLock":
        """Take the lock.

        Raises:
            RunFolderError: another live process holds it (the message names its process id).
        """
        self._created_folder = not os.path.isdir(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = _read_owner(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                self._remove_created_folder()
                raise RunFolderError(
                    f"{self.run_dir}: another train.py (process {owner if owner is not None else '?'}) is running "
                    f"in this folder; wait for it to end, or choose another --run_dir") from e
            # The owner may have released (and unlinked) the file between our open and flock:
            # then the lock is on a file nobody else will see; start again.
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)
        previous = _read_owner(fd)
        if previous is not None and previous != os.getpid():
            logger.warning("%s: taking over the lock of process %d, which is no longer running (killed?)",
                           self.run_dir, previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up: the file is removed (while still locked), then closed."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        if self._created_folder:
            try:
                os.rmdir(self.run_dir)  # only when empty
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
