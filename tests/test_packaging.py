"""Release metadata: one version everywhere, the license shipped, links that work on PyPI.

The version is written once, in CMakeLists.txt's project(); pyproject.toml reads it from there
(scikit-build-core's regex provider) and the extension is compiled with it. These tests compare
the source tree with the installed distribution, so they need the package installed from this
checkout (as the README's test command does).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

import pypersistent

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 has no tomllib; the checks that need it are skipped
    tomllib = None


def cmake_version() -> str:
    text = (ROOT / "CMakeLists.txt").read_text()
    found = re.findall(r"^project\(pypersistent\s+VERSION\s+([0-9][0-9.]*)", text, re.MULTILINE)
    assert len(found) == 1, "CMakeLists.txt must name the version exactly once"
    return found[0]


def test_version_is_3_x_and_agrees_everywhere() -> None:
    version = cmake_version()
    assert version.split(".")[0] == "3", "this is pypersistent 2.0's next major version"
    assert pypersistent.__version__ == version
    assert pypersistent._pypersistent.__version__ == version
    assert metadata.version("pypersistent") == version


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_pyproject_takes_the_version_from_cmake() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert "version" not in project and "version" in project["dynamic"]
    provider = pyproject["tool"]["scikit-build"]["metadata"]["version"]
    assert provider["input"] == "CMakeLists.txt"
    assert re.search(provider["regex"], (ROOT / "CMakeLists.txt").read_text()).group("value") == cmake_version()
    for path in ("python/pypersistent/__init__.py", "src/CMakeLists.txt", "src/module.cpp"):
        assert not re.search(r"\b\d+\.\d+\.\d+\b", (ROOT / path).read_text()), f"a version number in {path}"


def test_license_is_mit_and_ships_with_the_distribution() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    meta = metadata.metadata("pypersistent")
    assert meta["License-Expression"] == "MIT"
    assert "LICENSE" in (meta.get_all("License-File") or [])
    shipped = [f for f in metadata.files("pypersistent") or [] if f.name == "LICENSE"]
    assert shipped, "the wheel carries no LICENSE file"
    assert shipped[0].read_text().startswith("MIT License")


def test_project_urls_and_changelog() -> None:
    urls = dict(u.split(", ", 1) for u in metadata.metadata("pypersistent").get_all("Project-URL") or [])
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {cmake_version()}" in changelog


def test_readme_links_are_absolute() -> None:
    # PyPI renders the README outside the repository: a relative link there leads nowhere.
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # code blocks hold C++ lambdas
    relative = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"https?://|#", t)]
    assert relative == []
