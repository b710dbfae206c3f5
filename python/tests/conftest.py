"""Shared test set-up: import the package from source, short socket paths."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)


@pytest.fixture
def sock_dir():
    """A short directory for sockets (tmp_path can exceed the 107-byte limit)."""
    path = tempfile.mkdtemp(prefix="cyw-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(sock_dir):
    """A socket path nobody listens on yet."""
    return os.path.join(sock_dir, "w.sock")
