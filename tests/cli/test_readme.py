"""The README's examples run as written (all but the first block, which is setup itself)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_setup_and_run_commands():
    first = _blocks("sh")[0].strip().splitlines()
    assert len(first) == 2
    assert first[0].endswith("tmebox demo")
    assert "pytest" in first[1]


def test_readme_examples_run(tmp_path, sandbox_libc):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    shell = _blocks("sh")[1]
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("hello from a sandbox, 3 args") == 2  # tmebox run, ./hello
    assert "exit status 7" in out.stdout
    assert "hello.box: ok (code+data" in out.stdout
    for block in _blocks("python"):
        out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
