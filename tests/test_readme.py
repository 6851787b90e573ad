"""Every ```python block in the repository's README.md runs without error.

Blocks run in order in one namespace per test (so a block may use names that earlier
blocks defined); the test for block N runs blocks 0..N.  Blocks written as interactive
sessions (lines starting with ``>>>``) are checked with doctest, output included.
Use another fence language (```pycon, ```text, ```bash) for code that must not run.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
    r"(?P<body>.*?)"
    r"^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_PYTHON_LANGS = {"python", "py", "python3"}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, dedented source) of each fenced block whose language is Python."""
    blocks = []
    for match in _FENCE.finditer(text):
        info = match.group("info").strip().split()
        if not info or info[0].lower() not in _PYTHON_LANGS:
            continue
        indent = match.group("indent")
        lines = match.group("body").splitlines()
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines)
        line_no = text.count("\n", 0, match.start()) + 1
        blocks.append((line_no, body + "\n"))
    return blocks


def _load_blocks() -> list[tuple[int, str]]:
    if not README.is_file():
        return []
    return python_blocks(README.read_text(encoding="utf-8"))


BLOCKS = _load_blocks()


def _run_block(index: int, namespace: dict) -> None:
    line_no, source = BLOCKS[index]
    name = f"README.md:{line_no}"
    if any(line.lstrip().startswith(">>>") for line in source.splitlines()):
        parser = doctest.DocTestParser()
        test = parser.get_doctest(source, namespace, name, str(README), line_no)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, clear_globs=False)
        failed = runner.summarize(verbose=False).failed
        if failed:
            pytest.fail(f"{failed} doctest example(s) failed in the block at {name}")
    else:
        exec(compile(source, name, "exec"), namespace)


@pytest.mark.skipif(not README.is_file(), reason="README.md is missing")
@pytest.mark.skipif(README.is_file() and not BLOCKS, reason="README.md has no python blocks")
@pytest.mark.parametrize(
    "index", range(max(len(BLOCKS), 1)), ids=[f"line{ln}" for ln, _ in BLOCKS] or ["none"]
)
def test_readme_block_runs(index):
    namespace = {"__name__": "__readme__"}
    for earlier in range(index):
        try:
            _run_block(earlier, namespace)
        except BaseException as exc:  # noqa: BLE001
            pytest.fail(f"an earlier block (line {BLOCKS[earlier][0]}) failed: {exc!r}")
    _run_block(index, namespace)


def test_python_block_extraction():
    text = (
        "intro\n"
        "```python\nx = 1\n```\n"
        "```bash\npip install pypersistent\n```\n"
        "- item\n"
        "  ```py\n  y = 2\n  ```\n"
        "~~~python title=example\nz = 3\n~~~\n"
        "```\nplain\n```\n"
    )
    blocks = python_blocks(text)
    assert [b for _, b in blocks] == ["x = 1\n", "y = 2\n", "z = 3\n"]
    assert [ln for ln, _ in blocks] == [2, 9, 12]
