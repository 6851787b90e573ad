"""The package's type information: ``mypy --strict`` accepts tests/typing_usage.py, and the
same file runs correctly."""

from __future__ import annotations

import importlib.util
import os
import runpy
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import import_roots

USAGE_FILE = Path(__file__).resolve().parent / "typing_usage.py"


def _site_dirs() -> set[str]:
    dirs = set(site.getsitepackages()) if hasattr(site, "getsitepackages") else set()
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if isinstance(user, str):
        dirs.add(user)
    return {os.path.realpath(d) for d in dirs}


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_strict_accepts_typing_usage(tmp_path):
    env = dict(os.environ)
    # Let mypy find the package where this process imports it from; mypy finds installed
    # packages on its own (through --python-executable) and refuses site-packages in
    # MYPYPATH, so only add source/build directories.
    site_dirs = _site_dirs()
    extra = [r for r in import_roots() if os.path.realpath(r) not in site_dirs]
    existing = [p for p in env.get("MYPYPATH", "").split(os.pathsep) if p]
    if extra or existing:
        env["MYPYPATH"] = os.pathsep.join(extra + existing)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "mypy_cache"),
            "--python-executable",
            sys.executable,
            str(USAGE_FILE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_typing_usage_runs():
    runpy.run_path(str(USAGE_FILE), run_name="__main__")


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_stub_file_itself_passes_mypy_strict(tmp_path):
    # mypy does not report errors inside installed packages, so check a copy of the stub.
    spec = importlib.util.find_spec("pypersistent")
    assert spec is not None and spec.origin is not None
    stub = Path(spec.origin).with_suffix(".pyi")
    assert stub.exists(), "the package ships no type stub"
    package = tmp_path / "pypersistent"
    package.mkdir()
    (package / "__init__.pyi").write_text(stub.read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "-p", "pypersistent"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
