"""The ```python examples of docs/tme.md run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "tme.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


def test_doc_has_examples() -> None:
    assert len(_blocks()) >= 8


def test_doc_examples_run() -> None:
    namespace: dict[str, object] = {}
    for i, block in enumerate(_blocks()):
        code = compile(block, f"{DOC.name} example {i + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - the doc's own examples
