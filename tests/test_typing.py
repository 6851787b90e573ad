"""The package's type information: ``mypy --strict`` and pyright in strict mode (basedpyright,
which bundles its own Node.js) accept tests/typing_usage.py and the stub itself, reject the misuses
in REJECTED_USAGE, and typing_usage.py runs correctly."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import shutil
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


def _mypy_strict(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Let mypy find the package where this process imports it from; mypy finds installed
    # packages on its own (through --python-executable) and refuses site-packages in
    # MYPYPATH, so only add source/build directories.
    site_dirs = _site_dirs()
    extra = [r for r in import_roots() if os.path.realpath(r) not in site_dirs]
    existing = [p for p in env.get("MYPYPATH", "").split(os.pathsep) if p]
    if extra or existing:
        env["MYPYPATH"] = os.pathsep.join(extra + existing)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "mypy_cache"),
            "--python-executable",
            sys.executable,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_strict_accepts_typing_usage(tmp_path):
    proc = _mypy_strict(USAGE_FILE, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Each line marked "# rejected" must get a mypy error, and no other line may.
REJECTED_USAGE = """\
from pypersistent import Atom, PersistentMap

def add(m: PersistentMap[str, int], key: str, by: int) -> PersistentMap[str, int]:
    return m.set(key, m.get(key, 0) + by)

counts = Atom(PersistentMap(n=0))
counts.swap(add, "n", 1)
counts.swap(add, "n", by=2)
counts.swap(add, "n", "one")  # rejected
counts.swap(add, "n")  # rejected
counts.swap(add, "n", 1, 2)  # rejected
counts.swap(add, "n", step=1)  # rejected
counts.swap(lambda m: m.set("n", "x"))  # rejected

def widen(flags: PersistentMap[str, bool]) -> PersistentMap[str, int]:
    return flags

def narrow(numbers: PersistentMap[str, int]) -> PersistentMap[str, bool]:
    return numbers  # rejected

numbers: PersistentMap[str, int] = PersistentMap(a=1)
numbers = numbers.set("b", 2)
numbers = numbers.set("b", "two")  # rejected
"""


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_strict_rejects_misuse(tmp_path):
    # Atom.swap checks its extra arguments against fn (ParamSpec); maps are covariant in their
    # values, and an update with another value type gives a map of the union.
    path = tmp_path / "rejected_usage.py"
    path.write_text(REJECTED_USAGE)
    proc = _mypy_strict(path, tmp_path)
    expected = {n for n, line in enumerate(REJECTED_USAGE.splitlines(), 1) if line.endswith("# rejected")}
    reported = {
        int(line.split(":")[1])
        for line in proc.stdout.splitlines()
        if line.startswith(path.name + ":") and ": error:" in line
    }
    assert reported == expected, proc.stdout + proc.stderr


def _pyright_executable() -> str | None:
    beside = Path(sys.executable).with_name("basedpyright")
    return str(beside) if beside.exists() else shutil.which("basedpyright")


needs_pyright = pytest.mark.skipif(_pyright_executable() is None, reason="basedpyright is not installed")


def _pyright_strict(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    site_dirs = _site_dirs()
    config = {
        "typeCheckingMode": "strict",
        "pythonVersion": f"{sys.version_info.major}.{sys.version_info.minor}",
        "extraPaths": [r for r in import_roots() if os.path.realpath(r) not in site_dirs],
    }
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    executable = _pyright_executable()
    assert executable is not None
    return subprocess.run(
        [executable, "--pythonpath", sys.executable, "-p", str(tmp_path / "pyrightconfig.json"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


@needs_pyright
def test_pyright_strict_accepts_typing_usage(tmp_path):
    proc = _pyright_strict(USAGE_FILE, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_pyright
def test_pyright_strict_rejects_misuse(tmp_path):
    path = tmp_path / "rejected_usage.py"
    path.write_text(REJECTED_USAGE)
    proc = _pyright_strict(path, tmp_path)
    expected = {n for n, line in enumerate(REJECTED_USAGE.splitlines(), 1) if line.endswith("# rejected")}
    # "  /tmp/.../rejected_usage.py:9:23 - error: ..."
    reported = {
        int(line.strip().split(":")[1])
        for line in proc.stdout.splitlines()
        if line.strip().startswith(str(path) + ":") and " - error:" in line
    }
    assert reported == expected, proc.stdout + proc.stderr


@needs_pyright
def test_stub_file_itself_passes_pyright_strict(tmp_path):
    spec = importlib.util.find_spec("pypersistent")
    assert spec is not None and spec.origin is not None
    stub = Path(spec.origin).with_suffix(".pyi")
    package = tmp_path / "pypersistent"
    package.mkdir()
    (package / "__init__.pyi").write_text(stub.read_text())
    proc = _pyright_strict(package / "__init__.pyi", tmp_path)
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
