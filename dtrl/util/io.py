"""Atomic file writes: a result or checkpoint is either the old file or the whole new one, never half.

Every file dtrl writes goes through :func:`atomic_write` (text, JSON, torch, HDF5, figures):

* the data goes to a temporary file beside the target, is fsynced, renamed over the target with
  ``os.replace``, and the directory is fsynced, so a crash (even of the machine) leaves the old
  file or the new one;
* the file gets the mode a plain ``open()`` would give it (0666 minus the user's umask), not
  ``mkstemp``'s 0600, so a group sharing a results tree on a cluster can read it;
* temporary files a killed write left behind (``.<name>.<host>.<pid>.<random>.tmp``) are removed
  at the next write of the same path: those of a process of this host that no longer runs, and
  those of other hosts once they are an hour old (a shared filesystem cannot tell whether a remote
  writer still runs).

JSON is strict: non-finite floats (NaN, inf) are written as ``null`` by :func:`to_json` (the one
place JSON is made), so every ``summary.json`` parses with any JSON reader.

Reading: :func:`torch_load` and :func:`read_json` turn an unreadable file (truncated, not of the
expected kind) into one :class:`InputError` naming the file and what to do about it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable

import torch

_STALE_REMOTE_S = 3600.0  # temp files of another host are removed once this old


class InputError(ValueError):
    """A file given to dtrl cannot be used. The message names the file, what is wrong and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove temp files of earlier writes of ``path`` whose writer is gone; returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix, host, removed = _tmp_prefix(path), _host(), []
    for p in path.parent.glob(f"{prefix}*.tmp"):
        parts = p.name[len(prefix):-len(".tmp")].split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            continue  # not one of ours
        tmp_host, pid = parts[0], int(parts[1])
        try:
            if tmp_host == host:
                stale = pid == os.getpid() or not _pid_alive(pid)  # our writes are sequential per path
            else:
                stale = time.time() - p.stat().st_mtime > _STALE_REMOTE_S
            if stale:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some filesystems do not open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file beside it, which then replaces it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = str(path.parent / f"{_tmp_prefix(path)}{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # writers that recreate the file (h5py) get the same mode
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


_atomic = atomic_write  # the name older modules import


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf, numpy's too) replaced by None, recursively."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_none(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def to_json(obj: Any) -> str:
    """Strict JSON text of ``obj`` (sorted keys, indented); non-finite floats become null."""
    return json.dumps(finite_or_none(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically (the format from the suffix), so a killed report leaves no torn figure."""
    path = Path(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip("."), **kwargs))


def torch_load(path: str | Path, map_location: Any = "cpu", fix: str | None = None) -> Any:
    """Load a dtrl torch file; an unreadable one raises :class:`InputError` (``fix`` says what to do)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # Checkpoints hold configs, numpy RNG state and counters besides tensors; they are our own files.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ... for torn files
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""  # torch's hints run on for lines
        what = f"{type(e).__name__}: {first}".rstrip(": ")
        raise InputError(f"{path} is not a readable torch file (truncated or corrupt? {what}); "
                         f"{fix or 'delete it and make it again'}") from None


def read_json(path: str | Path, fix: str | None = None) -> Any:
    """Parse a JSON file; an unreadable one raises :class:`InputError` naming it (``fix``: what to do)."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON (truncated or corrupt? {e}); "
                         f"{fix or 'delete it and make it again'}") from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")
