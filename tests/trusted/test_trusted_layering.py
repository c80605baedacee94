"""The trusted core imports nothing else of tmebox: what a reviewer reads is all there is."""

from __future__ import annotations

import ast
from pathlib import Path

import tmebox.trusted

TRUSTED = Path(tmebox.trusted.__file__).parent


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_trusted_imports_only_itself_and_third_party() -> None:
    modules = sorted(TRUSTED.glob("*.py"))
    assert len(modules) >= 4
    bad = [(m.name, name) for m in modules for name in _imports(m)
           if name.startswith("tmebox") and not name.startswith("tmebox.trusted")]
    assert bad == []


def test_layering_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.py"
    leaky.write_text("from tmebox.runtime import api\nimport tmebox.toolchain.cc\n")
    assert _imports(leaky) == ["tmebox.runtime", "tmebox.toolchain.cc"]
