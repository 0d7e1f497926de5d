"""One process per working directory: an OS lock held while a run, a pretraining or a behaviour run trains.

Two processes training the same directory (a scheduler resubmitting a job whose first copy still runs)
would interleave checkpoints and logs. :func:`hold` takes ``fcntl.flock`` on ``<dir>/.lock``; the kernel
releases it when the process ends however it ends (kill -9 included), so a lock is never stale. The
holder writes its pid, host and start time into the file, which a second process names in its error.

The file is removed on release. With flock that is safe only with a check: a process that waited on
the old file may get its lock after the holder unlinked it, so after locking, the file's inode is
compared with the path's and the lock is retaken on the new file when they differ.

flock is advisory and, on some network filesystems, local to a host; on a cluster a second host's
process is then not stopped by it (the README's SLURM recovery section: cancel the old jobs first).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from dtrl.util.io import InputError

LOCK_NAME = ".lock"


class LockHeld(InputError):
    """Another process holds the directory's lock (exit 2: the command was not run)."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


def _open_locked(path: Path, wait: bool) -> int | None:
    """An fd of ``path`` holding its exclusive flock, or None when another process holds it and not ``wait``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the previous holder removed it while we waited
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def hold(directory: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold ``directory``'s lock for the block. Another holder: raise :class:`LockHeld` naming it, or (``wait``)
    wait for it. A directory this call had to create is removed again if the block left it empty."""
    d = Path(directory)
    created = [p for p in (d, *d.parents) if not p.exists()]  # innermost first
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOCK_NAME
    fd = _open_locked(path, wait=False)
    if fd is None:
        holder = _holder(path)
        if not wait:
            _remove_if_empty(created)
            raise LockHeld(f"{d} is locked by another process training {what} ({holder}); two processes must not "
                           f"train one directory. Wait for it to end, stop it (under SLURM: scancel --name <the old "
                           f"run's id>, see README), or pass --wait to wait for it")
        print(f"dtrl: waiting for {d} ({what}), locked by {holder}", file=sys.stderr)
        fd = _open_locked(path, wait=True)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a waiter then retakes the lock on a new file
        os.close(fd)
        _remove_if_empty(created)


def _remove_if_empty(dirs: list[Path]) -> None:
    """Remove the directories this process created (innermost first) that nothing was written into."""
    for p in dirs:
        try:
            p.rmdir()
        except OSError:
            return
