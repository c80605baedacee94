"""`tmebox cc`: the driver. C or assembly -> instrumented objects -> a verified sandbox image.

Every translation unit goes through tmebox.toolchain.unit (`gcc -S` -> `rewrite_assembly` ->
`as`); the image is linked by tmebox.toolchain.link (`ld` with the tmebox linker script, the
tmebox crt and the sandbox libc of the same isolation mode), then checked (layout,
relocations, exports) and verified before it is renamed into place. The layers: unit <- libc
<- link <- cc, each importing only those below it.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tmebox.errors import ToolchainError
from tmebox.toolchain import libc, link
from tmebox.toolchain.unit import (
    NATIVE,
    SOURCE_SUFFIXES,
    compile_unit,
    find_compiler,
    run,
    sandbox_cflags,
)
from tmebox.trusted import abi

__all__ = ["OPT_LEVELS", "build", "build_native"]

OPT_LEVELS = ("0", "1", "2", "3", "s", "g")


# ---------------------------------------------------------------------------
# the `tmebox cc` entry point


def _compile_flags(isolation: str, opt: str, include_dirs: list[Path], defines: list[str],
                   compiler: str) -> list[str]:
    if opt not in OPT_LEVELS:
        raise ToolchainError(f"-O{opt}: unknown optimisation level (use one of "
                             f"{', '.join(OPT_LEVELS)})")
    cc = find_compiler(compiler)
    # A first build of the sandbox libc takes a minute or two: say so on stderr.
    prefix = libc.ensure_libc(isolation, progress=True)
    flags = [f"-O{opt}"]
    flags += [f"-I{d}" for d in include_dirs]
    flags += [f"-D{d}" for d in defines]
    flags += ["-nostdinc", "-isystem", str(prefix / "include"), "-isystem", cc.include_dir,
              "-isystem", str(link.INCLUDE_DIR)]
    # Debug information is where the link step reads exports' and imports' C signatures
    # (link.signatures); it does not change the code, and the image is linked without it.
    # Names inline, not in .debug_str: readable without relocating (toolchain.signatures).
    flags += ["-g", "-fno-merge-debug-strings"]
    return flags


def build(sources: list[Path], output: Path | None, isolation: str, opt: str = "2",
          include_dirs: list[Path] | None = None, defines: list[str] | None = None,
          compile_only: bool = False, compiler: str = "gcc", libs: list[str] | None = None,
          *, stack_size: int = abi.DEFAULT_STACK_SIZE) -> list[Path]:
    """Compile sources (.c, .s, .S; .o too when linking) into one verified image, or objects.

    Returns the paths written: the image, or with compile_only one object per source
    (named like gcc does: foo.c -> foo.o in the current directory, or output).
    """
    include_dirs = include_dirs or []
    defines = defines or []
    libs = libs or []
    sandbox_cflags(isolation)  # rejects an unknown mode before any work
    if not sources:
        raise ToolchainError("no input files")
    for src in sources:
        if src.is_dir():
            raise ToolchainError(f"{src}: is a directory")
        if not src.is_file():
            raise ToolchainError(f"{src}: no such file")
        allowed = SOURCE_SUFFIXES if compile_only else SOURCE_SUFFIXES + (".o",)
        if src.suffix not in allowed:
            raise ToolchainError(f"{src}: unsupported input type {src.suffix or '(none)'} "
                                 f"(expected {', '.join(allowed)})")
    flags = _compile_flags(isolation, opt, include_dirs, defines, compiler)

    if compile_only:
        if output is not None and len(sources) > 1:
            raise ToolchainError("-o with -c needs exactly one source file")
        outs = [output if output is not None else Path(src.with_suffix(".o").name)
                for src in sources]
        for src, out in zip(sources, outs, strict=True):
            tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
            try:
                compile_unit(src, tmp, isolation=isolation, flags=flags, compiler=compiler)
                os.replace(tmp, out)
            except OSError as e:
                raise ToolchainError(f"cannot write {out}: {e.strerror or e}") from None
            finally:
                tmp.unlink(missing_ok=True)
        return outs

    if output is None:
        output = Path(sources[0].with_suffix(".box").name)
    with tempfile.TemporaryDirectory(prefix="tmebox-cc-") as build_dir:
        objects = [src if src.suffix == ".o" else Path(build_dir) / f"{i}-{src.stem}.o"
                   for i, src in enumerate(sources)]
        todo = [(src, obj) for src, obj in zip(sources, objects, strict=True) if src != obj]
        # The compiler runs in a subprocess, so threads compile files in parallel;
        # map() re-raises the first failure in source order.
        with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1) or 1) as pool:
            list(pool.map(lambda job: compile_unit(job[0], job[1], isolation=isolation,
                                                   flags=flags, compiler=compiler), todo))
        try:
            link.link_image(objects, output, isolation=isolation, libs=libs,
                            stack_size=stack_size)
        except OSError as e:
            raise ToolchainError(f"cannot write {output}: {e.strerror or e}") from None
    return [output]


def build_native(sources: list[Path], output: Path, *, opt: str = "2",
                 defines: list[str] | None = None) -> Path:
    """Baseline: compile and link C sources as an ordinary static executable against the
    same musl, uninstrumented (libc mode "native"), for comparisons and benchmarks."""
    prefix = libc.ensure_libc(NATIVE)
    compiler = find_compiler("gcc")
    lib = prefix / "lib"
    run([
        compiler.path, f"-O{opt}", *[f"-D{d}" for d in defines or []],
        "-nostdinc", "-isystem", str(prefix / "include"), "-isystem", compiler.include_dir,
        "-static", "-nostdlib", "-o", str(output), str(lib / "crt1.o"), str(lib / "crti.o"),
        *[str(s) for s in sources], str(lib / "libc.a"), "-lgcc", str(lib / "crtn.o"),
    ], f"building native {output}")
    return output
