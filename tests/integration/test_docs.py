"""docs/porting.md cannot rot: every ``$ `` command in its console blocks runs, in order.

The commands run one by one (``bash -c``) in a temporary copy of the
repository's ``models/`` and ``tests/`` scaffolding, as a newcomer would run
them from the repository's root. A command must exit 0, unless it ends with
the comment ``# exits N``. Each output line the guide shows under a command
must appear in what the command printed (whitespace collapsed); ``...`` in a
line stands for anything, and a line of only ``...`` is not checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import make_repo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "porting.md"
BIN = Path(sys.executable).parent
_EXITS = re.compile(r"#\s*exits\s+(\d+)\s*$")


@dataclass
class Command:
    """One ``$ `` line of the guide and the output lines shown under it."""

    line: int
    text: str
    shown: list[str] = field(default_factory=list)

    @property
    def expected_status(self) -> int:
        match = _EXITS.search(self.text)
        return int(match.group(1)) if match else 0


def commands(markdown: str) -> list[Command]:
    """The ``$ `` commands of every ```` ```console ```` block, in order."""
    found: list[Command] = []
    inside = False
    for number, line in enumerate(markdown.splitlines(), start=1):
        if line.startswith("```"):
            inside = line.strip() == "```console" if not inside else False
            continue
        if not inside:
            continue
        if line.startswith("$ "):
            found.append(Command(number, line[2:]))
        elif found and line.strip():
            found[-1].shown.append(line)
    return found


def _flat(text: str) -> str:
    return " ".join(text.split())


def shown_line_matches(shown: str, output: str) -> bool:
    """Whether ``output`` holds ``shown`` (``...`` = anything; whitespace collapsed)."""
    parts = [re.escape(_flat(p)) for p in shown.split("...")]
    return re.search(r".*?".join(parts), _flat(output), flags=re.DOTALL) is not None


def test_the_guide_has_the_path_from_new_to_a_local_batch_transform() -> None:
    texts = [c.text for c in commands(GUIDE.read_text())]
    assert texts[0].startswith("smserve new ")
    assert any(t.startswith("smserve check ") and "--transform" in t for t in texts)
    assert any(t.startswith("smserve check ") and "--serve" in t for t in texts)
    assert any("pytest" in t for t in texts)
    assert any("--request" in t for t in texts)  # replaying a failed record


def test_the_parser_and_the_matcher() -> None:
    guide = "```console\n$ a  # exits 1\nout ... put\n...\n```\n```python\n$ not run\n```\n"
    [command] = commands(guide)
    assert (command.text, command.expected_status, command.shown) == \
        ("a  # exits 1", 1, ["out ... put", "..."])
    assert shown_line_matches("out ... put", "the output\n is  put here")
    assert not shown_line_matches("put ... out", "output")
    assert shown_line_matches("...", "")


def test_every_command_of_the_guide_runs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "SETUPTOOLS_USE_DISTUTILS": "stdlib", "PYTHONDONTWRITEBYTECODE": "1"}
    for key in [k for k in env if k.startswith("AWS_")]:
        del env[key]
    found = commands(GUIDE.read_text())
    assert len(found) >= 8
    for command in found:
        done = subprocess.run(["bash", "-c", command.text], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        output = done.stdout + done.stderr
        where = f"docs/porting.md line {command.line}: $ {command.text}\n{output}"
        assert done.returncode == command.expected_status, where
        for shown in command.shown:
            if shown.strip() != "...":
                assert shown_line_matches(shown, output), f"not printed: {shown!r}\n{where}"
