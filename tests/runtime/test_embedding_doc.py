"""The example of docs/embedding.md runs as written (its python blocks, in order)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


def test_embedding_doc_example_runs(tmp_path, monkeypatch, sandbox_libc, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["(f64) -> f64", "(ptr, u64) -> i32",
                       "neg(i32) -> i32 takes 1 argument(s), 0 given"]
    assert "out of range for i32" in out[3]
