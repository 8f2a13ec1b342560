"""Who is working on a shared folder: host ids, owners of temporary files and claims, liveness.

Several processes, on one machine or several sharing folders over NFS/SMB, may work on one root.
Each process is an *owner*, ``<host id>~<pid>``, written into the names of its temporary files
and into its claims, so another process can tell whether the owner is gone: on the same host, by
its pid; on another host (whose pids mean nothing here), only by age.
"""

from __future__ import annotations

import os
import re
import socket
import time
from functools import lru_cache

OTHER_HOST_TEMP_AGE = 3600.0
"""A temporary file of another host older than this is abandoned (a sidecar write takes milliseconds)."""

_TEMP = re.compile(r"^\..*~(?P<host>[A-Za-z0-9_-]+)~(?P<pid>\d+)~\d+\.tmp$")


@lru_cache(maxsize=1)
@lru_cache(maxsize=1)
def default_host_id() -> str:
    """This machine's id: the start of ``/etc/machine-id`` (stable across renames), else its host
    name (read once per process: every temporary file name carries it)."""
    try:
        with open("/etc/machine-id") as handle:
            found = handle.read().strip()[:12]
    except OSError:
        found = ""
    if not re.fullmatch(r"[0-9a-f]{12}", found):
        found = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "host"
    return found


def host_id(configured: str | None = None) -> str:
    """The ``host_id`` setting, else :func:`default_host_id`."""
    return configured or default_host_id()


def owner(host: str) -> str:
    """This process, as written into temporary file names and claims: ``<host>~<pid>``."""
    return f"{host}~{os.getpid()}"


def alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's, but alive
    return True


def owner_gone(who: str, host: str) -> bool:
    """Whether the owner ``<host>~<pid>`` is known to be gone (only decidable on its own host)."""
    owner_host, _, pid = who.rpartition("~")
    return owner_host == host and pid.isdigit() and not alive(int(pid))


def abandoned_temp(name: str, mtime_ns: int, host: str, now: float | None = None) -> bool:
    """Whether the temporary file ``name`` was left by a writer that is gone (never a live one's).

    Of this host: its process is gone. Of another host: it is older than an hour.
    """
    found = _TEMP.match(name)
    if found is None:
        return False
    if found["host"] == host:
        return not alive(int(found["pid"]))
    return (now if now is not None else time.time()) - mtime_ns / 1e9 > OTHER_HOST_TEMP_AGE
