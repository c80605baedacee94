"""The examples of docs/runtime.md run as written."""

from __future__ import annotations

from pathlib import Path

from doc_blocks import run_python_blocks

DOC = Path(__file__).resolve().parents[2] / "docs" / "runtime.md"


def test_runtime_doc_examples_run(tmp_path, monkeypatch):
    run_python_blocks(DOC, tmp_path, monkeypatch, at_least=3)
