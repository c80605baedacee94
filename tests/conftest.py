"""Fixtures shared by every test layer.

- `sandbox_libc` (session): builds the sandbox libc of both isolation modes once
  (cached in ~/.cache/tmebox; the first build takes a minute or two) and maps
  mode -> prefix directory.
- `build_image` (function): `build_image(source, mode="code+data", **kw) -> Path`
  compiles C source text (or a Path to a .c/.s/.S file) with `tmebox cc` into a
  verified image in the test's tmp_path.  Keyword arguments go to
  tmebox.toolchain.cc.build (opt, defines, include_dirs, ...); `name` picks the
  file names.

    def test_square(build_image):
        image = build_image("int square(int x) { return x * x; }", mode="data")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sandbox_libc() -> dict[str, Path]:
    from tmebox.toolchain import libc

    return {mode: libc.ensure_libc(mode) for mode in libc.MODES}


def compile_image(tmp_path: Path, source: str | Path, mode: str = "code+data", *,
                  name: str = "prog", **kw) -> Path:
    """Compile C text or a source file into tmp_path/<name>-<mode>.box; returns its path."""
    from tmebox.toolchain import cc

    if isinstance(source, Path):
        src = source
    else:
        src = tmp_path / f"{name}.c"
        src.write_text(source)
    out = tmp_path / f"{name}-{mode.replace('+', '_')}.box"
    (image,) = cc.build([src], out, isolation=mode, **kw)
    return image


@pytest.fixture
def build_image(tmp_path: Path, sandbox_libc: dict[str, Path]) -> Callable[..., Path]:
    def build(source: str | Path, mode: str = "code+data", **kw) -> Path:
        return compile_image(tmp_path, source, mode, **kw)

    return build
