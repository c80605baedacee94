"""Fixtures shared by every test layer.

- The session runs with its own cache root (`$TMEBOX_CACHE`, a temporary directory) and
  the user's cache as `$TMEBOX_SHARED_CACHE` for the sandbox libc and fetched sources.
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

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tmebox.trusted import cache


def pytest_configure(config: pytest.Config) -> None:
    """A private cache root for the session (verdicts, `tmebox run`'s programs); expensive,
    content-addressed artefacts (the sandbox libc, fetched sources) stay shared."""
    os.environ.setdefault("TMEBOX_SHARED_CACHE", str(cache.shared()))
    os.environ["TMEBOX_CACHE"] = tempfile.mkdtemp(prefix="tmebox-test-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ["TMEBOX_CACHE"], ignore_errors=True)


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
