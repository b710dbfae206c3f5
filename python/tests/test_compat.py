"""The package stays within its promises: Python 3.9, standard library only."""

from __future__ import annotations

import ast
import os
import sys

import pytest
from sim_process import PYTHON_DIR

PACKAGE_DIR = os.path.join(PYTHON_DIR, "cy_worker")


def package_sources():
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    yield path, f.read()


def test_every_module_parses_as_python_3_9():
    for path, source in package_sources():
        ast.parse(source, filename=path, feature_version=(3, 9))


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_the_package_imports_only_the_standard_library():
    stdlib = sys.stdlib_module_names
    for path, source in package_sources():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in stdlib or root == "__future__", f"{path} imports {name}"
