"""Running a doc page's ```python blocks in order, as its reader would."""

from __future__ import annotations

import re
from pathlib import Path


def run_python_blocks(doc: Path, workdir: Path, monkeypatch, at_least: int) -> None:
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert len(blocks) >= at_least, f"{doc}: expected at least {at_least} python blocks"
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{doc}:block{i}", "exec"), namespace)  # noqa: S102
