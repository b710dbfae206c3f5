"""The listening socket's file: checks before binding, cleanup after.

A worker that crashed leaves its socket file behind, and binding to an
existing path fails, so a stale file is removed first. A file that another
process still accepts connections on is left alone: two workers on one
socket would split the sidecar's traffic between two models.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Optional, Tuple

# sockaddr_un.sun_path holds 108 bytes on Linux, one of them the final NUL.
MAX_SOCKET_PATH_BYTES = 107

# How long a connection attempt may take before the file counts as stale.
_LIVENESS_TIMEOUT_S = 0.5

FileId = Tuple[int, int]


def socket_path_problem(path: str) -> Optional[str]:
    """Describe why `path` cannot be a Unix socket path, or return None."""
    if not isinstance(path, str) or not path:
        return f"socket_path must be a non-empty string, got {path!r}"
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:
        return (
            f"socket_path is {size} bytes long; a Unix socket path holds at most "
            f"{MAX_SOCKET_PATH_BYTES}: {path!r}"
        )
    return None


def prepare_socket_path(path: str) -> None:
    """Make `path` bindable: create its folder, remove a stale socket file.

    Raises `FileExistsError` if `path` is something other than a socket,
    and `OSError` (EADDRINUSE) if a live process listens on it.
    """
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(
            errno.EEXIST, f"Cannot listen on {path}: it exists and is not a socket"
        )
    if _accepts_connections(path):
        raise OSError(
            errno.EADDRINUSE, f"Cannot listen on {path}: another process accepts connections on it"
        )
    os.unlink(path)


def file_id(path: str) -> Optional[FileId]:
    """Identify the file at `path` (device and inode), or None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def remove_if_same(path: str, expected: Optional[FileId]) -> None:
    """Remove `path` if it is still the file we created.

    A successor process may already have bound a new socket at the same
    path; that one must survive our shutdown.
    """
    if expected is not None and file_id(path) == expected:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _accepts_connections(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_LIVENESS_TIMEOUT_S)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()
