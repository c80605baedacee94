"""C file in, exit status out: the compile-and-run conveniences of `tmebox run`, the demo and
the benchmarks. They sit above both the toolchain and the runtime, which know nothing of each
other."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tmebox.errors import ImageError
from tmebox.runtime.api import Runtime
from tmebox.trusted import abi, cache
from tmebox.trusted.image import Isolation

TYPE_CHECKING = False  # (not typing's: `tmebox run` does without typing)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["compile_cached", "exec_command", "run_command"]


def run_command(target: Path, argv: Sequence[str], backend: str = "native",
                timeout: float | None = None,
                min_isolation: Isolation | str = Isolation.CODE_DATA,
                env: Mapping[str, str] | None = None, dirs: Mapping[str, Any] | None = None,
                memory_limit: int | None = None, argv0: str | None = None,
                cwd: str = "/") -> int:
    """`tmebox run`: run IMAGE (or compile FILE.c first) with the terminal's stdio, the
    environment `env` (none of the host's unless it is in there) and the directories
    `dirs` (spawn()'s form)."""
    target = source = Path(target)
    if argv0 is None:
        argv0 = target.stem if target.suffix == ".c" else target.name
    if target.suffix == ".c":
        target = compile_cached(target)
    elif not target.exists():
        raise ImageError(f"{target}: no such image")
    with Runtime(backend=backend, max_sandboxes=1, min_isolation=min_isolation) as rt:
        img = rt.load(target)
        if "main" not in img.plan.exports:
            raise ImageError(f"{source}: no main() to run (a misspelt name?)")
        sb = rt.spawn(img, argv=[argv0, *argv], timeout=timeout, env=env or {}, dirs=dirs,
                      memory_limit=memory_limit, cwd=cwd)
        return sb.run()


def exec_command(target: Path, argv: Sequence[str]) -> int:
    """`tmebox exec IMAGE ARGS`, what the `#!` line of a `tmebox cc` program runs: the image
    as the program it replaces would run - argv exactly as given (argv[0] is the image's
    path), the host's environment, the host's files read-only at their own paths and the
    current directory and $TMPDIR (or /tmp) read-write, the current directory as the
    working directory. Any isolation mode is taken: executing the file already trusts its
    `#!` line, which could name any interpreter."""
    here = os.getcwd()
    dirs: dict[str, Any] = {"/": "/"}
    for d in (os.environ.get("TMPDIR") or "/tmp", here):
        if os.path.isabs(d) and os.path.isdir(d):
            dirs[os.path.normpath(d)] = (d, "rw")
    return run_command(target, list(argv[1:]), min_isolation=Isolation.DATA,
                       env=os.environ, dirs=dirs, argv0=str(argv[0]), cwd=here)


def compile_cached(source: Path, isolation: str = abi.DEFAULT_ISOLATION) -> Path:
    """Compile a C file into an image once; later calls reuse it (keyed by source + toolchain)."""
    from tmebox.toolchain import cc  # only here: running an image needs no compiler


    try:
        text = source.read_bytes()
    except OSError as e:
        raise ImageError(f"{source}: cannot read: {e.strerror or e}") from None
    # Keyed by the source and the toolchain that compiles it: a rewriter change rebuilds.
    toolchain = Path(cc.__file__).parent
    files = sorted(f for f in [*toolchain.glob("*.py"), *toolchain.glob("data/**/*")]
                   if f.is_file())
    key = cache.fingerprint(files, text, str(source.resolve()), isolation, length=24)
    out = cache.root() / "run" / f"{source.stem}-{key}.box"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{os.getpid()}"
        cc.build(sources=[source], output=tmp, isolation=isolation)
        tmp.replace(out)
    return out
