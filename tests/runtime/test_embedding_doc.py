"""The example of docs/embedding.md runs as written (its python blocks, in order)."""

from __future__ import annotations

from pathlib import Path

from doc_blocks import run_python_blocks

DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


def test_embedding_doc_example_runs(tmp_path, monkeypatch, sandbox_libc, capsys):
    run_python_blocks(DOC, tmp_path, monkeypatch, at_least=3)
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["(f64) -> f64", "(ptr, u64) -> i32",
                       "neg(i32) -> i32 takes 1 argument(s), 0 given"]
    assert "out of range for i32" in out[3]
