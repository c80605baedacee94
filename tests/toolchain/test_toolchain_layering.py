"""The toolchain's layers: asm_syntax <- rewriter <- unit <- libc <- link <- cc, with no
cycle and no import hidden inside a function (a function-local import is how a cycle hides)."""

from __future__ import annotations

import ast
from pathlib import Path

import tmebox.toolchain

TOOLCHAIN = Path(tmebox.toolchain.__file__).parent
# The pipeline, bottom up; modules not named here are leaves (0) that import no toolchain module.
LAYERS = {"asm_syntax": 0, "nopmerge": 0, "rewriter": 1, "unit": 2, "libc": 3, "link": 4, "cc": 5,
          "driver": 6}


def _tmebox_imports(path: Path) -> tuple[set[str], list[int]]:
    """The toolchain modules path imports, and the lines of tmebox imports inside functions."""
    names: set[str] = set()
    nested: list[int] = []
    tree = ast.parse(path.read_text(), str(path))
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    inner = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tmebox"):
            mods = [node.module or ""]
            if node.module == "tmebox.toolchain":
                mods = [f"tmebox.toolchain.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names if a.name.startswith("tmebox")]
        else:
            continue
        if mods and id(node) in inner:
            nested.append(node.lineno)
        names |= {m.split(".")[2] for m in mods if m.startswith("tmebox.toolchain.")}
    return names, nested


def test_toolchain_modules_import_only_lower_layers() -> None:
    modules = {p.stem: p for p in TOOLCHAIN.glob("*.py") if p.stem != "__init__"}
    assert set(LAYERS) <= set(modules)
    for name, path in modules.items():
        imported, nested = _tmebox_imports(path)
        assert nested == [], f"{name}.py imports tmebox inside functions at lines {nested}"
        for dep in imported:
            assert LAYERS.get(dep, 0) < LAYERS.get(name, 0), f"{name} imports {dep}"


def test_layering_check_sees_a_hidden_cycle(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tmebox.toolchain import cc\n")
    assert _tmebox_imports(bad) == ({"cc"}, [2])
