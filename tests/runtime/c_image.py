"""Images of C sources for the runtime tests, built with `tmebox cc`."""

from __future__ import annotations

from pathlib import Path


def build_c(tmp_path_factory, name: str, source: str) -> Path:
    """An image of C `source` (code+data), built once into a fresh temporary folder."""
    from tmebox.toolchain import cc

    d = tmp_path_factory.mktemp(name)
    (d / f"{name}.c").write_text(source)
    (img,) = cc.build([d / f"{name}.c"], d / f"{name}.box", isolation="code+data")
    return img
