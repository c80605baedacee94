"""`tmebox cc`'s work: sources -> instrumented objects -> a verified sandbox image.

A `Build` says what one run does (the gcc-style command line of toolchain.driver, or the
`build()` shortcut of the Python API, fills it in). Every translation unit goes through
tmebox.toolchain.unit (`gcc -S` -> `rewrite_assembly` -> `as`); the image is linked by
tmebox.toolchain.link (`ld` with the tmebox linker script, the tmebox crt and the sandbox
libc of the same isolation mode), then checked (layout, relocations, exports) and verified
before it is renamed into place. The layers: unit <- libc <- link <- cc <- driver, each
importing only those below it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from tmebox.errors import ToolchainError
from tmebox.toolchain import libc, link
from tmebox.toolchain.output import publish, staging_dir
from tmebox.toolchain.unit import (
    NATIVE,
    SOURCE_SUFFIXES,
    Lang,
    compile_unit,
    compiler_command,
    find_compiler,
    language_of,
    run,
    sandbox_cflags,
)
from tmebox.trusted import abi
from tmebox.trusted.image import CpuLevel

__all__ = ["OPT_LEVELS", "Build", "Library", "Linked", "Source", "Stage", "build",
           "build_native", "run_build"]

OPT_LEVELS = ("0", "1", "2", "3", "s", "g")


class Stage(Enum):
    """Where a run stops, as gcc's -E, -S, -c or none of them say."""

    PREPROCESS = "-E"
    ASSEMBLY = "-S"
    OBJECT = "-c"
    IMAGE = ""


@dataclass(frozen=True)
class Source:
    """A file to compile (C, or assembly that the rewriter instruments)."""

    path: Path
    lang: Lang


@dataclass(frozen=True)
class Linked:
    """A file for the linker as it is: an instrumented object or an archive of them."""

    path: Path


@dataclass(frozen=True)
class Library:
    """-lNAME: an archive libNAME.a in a -L directory, or a part of the sandbox libc."""

    name: str


Input = Source | Linked | Library


@dataclass
class Build:
    """One run of `tmebox cc`."""

    inputs: list[Input]
    isolation: str = abi.DEFAULT_ISOLATION
    stage: Stage = Stage.IMAGE
    output: Path | None = None  # None: gcc's names (a.out, x.o, x.s; -E: stdout)
    cflags: list[str] = field(default_factory=list)  # to the compiler, in the order given
    as_flags: list[str] = field(default_factory=list)
    ld_flags: list[str] = field(default_factory=list)
    lib_dirs: list[Path] = field(default_factory=list)
    compiler: str = "gcc"
    stack_size: int = abi.DEFAULT_STACK_SIZE
    launcher: str | None = None  # the `#!` line that makes an image run as a program
    level: CpuLevel = CpuLevel.X86_64  # -march= / --target: the instructions code may use

    def sources(self) -> list[Source]:
        return [i for i in self.inputs if isinstance(i, Source)]


def build(sources: list[Path], output: Path | None, isolation: str, opt: str = "2",
          include_dirs: list[Path] | None = None, defines: list[str] | None = None,
          compile_only: bool = False, compiler: str = "gcc", libs: list[str] | None = None,
          *, stack_size: int = abi.DEFAULT_STACK_SIZE,
          level: CpuLevel | str = CpuLevel.X86_64) -> list[Path]:
    """Compile sources (.c, .s, .S; .o and .a too when linking) into one verified image, or
    objects: the Python API's shortcut for a Build.

    Returns the paths written: the image (output, or the first source's name with .box), or
    with compile_only one object per source (named like gcc does: foo.c -> foo.o in the
    current directory, or output).
    """
    if opt not in OPT_LEVELS:
        raise ToolchainError(f"-O{opt}: unknown optimisation level (use one of "
                             f"{', '.join(OPT_LEVELS)})")
    inputs: list[Input] = []
    for src in sources:
        lang = language_of(src)
        if lang is not None:
            inputs.append(Source(src, lang))
        elif src.suffix in (".o", ".a") and not compile_only:
            inputs.append(Linked(src))
        else:
            allowed = SOURCE_SUFFIXES if compile_only else (*SOURCE_SUFFIXES, ".o", ".a")
            raise ToolchainError(f"{src}: unsupported input type {src.suffix or '(none)'} "
                                 f"(expected {', '.join(allowed)})")
    inputs += [Library(name) for name in libs or []]
    if output is None and not compile_only and sources:
        output = Path(sources[0].with_suffix(".box").name)
    return run_build(Build(
        inputs=inputs, isolation=isolation, output=output, compiler=compiler,
        stage=Stage.OBJECT if compile_only else Stage.IMAGE, stack_size=stack_size,
        level=CpuLevel.parse(level),
        cflags=[f"-O{opt}", *[f"-I{d}" for d in include_dirs or []],
                *[f"-D{d}" for d in defines or []]],
    ))


def run_build(b: Build) -> list[Path]:
    """Do what b says; returns the files written (-E to stdout: none)."""
    sandbox_cflags(b.isolation)  # rejects an unknown mode before any work
    if b.isolation == NATIVE:
        raise ToolchainError("unsupported isolation 'native': it is the baseline's libc, "
                             "not an image mode")
    if not b.inputs:
        raise ToolchainError("no input files")
    for i in b.inputs:
        if isinstance(i, Source | Linked) and str(i.path) != "-":
            if i.path.is_dir():
                raise ToolchainError(f"{i.path}: is a directory")
            if not i.path.is_file():
                raise ToolchainError(f"{i.path}: no such file")
    sources = b.sources()
    if b.stage is not Stage.IMAGE:
        if b.output is not None and len(sources) > 1:
            raise ToolchainError(f"-o with {b.stage.value} needs exactly one source file")
        unused = [i for i in b.inputs if not isinstance(i, Source)]
        if unused:
            names = " ".join(str(i.path) if isinstance(i, Linked) else f"-l{i.name}"
                             for i in unused)
            print(f"tmebox cc: warning: {names}: linker input unused because linking not "
                  "done", file=sys.stderr)
        if not sources:
            raise ToolchainError("no source files to compile")
    if b.stage is Stage.PREPROCESS:
        return _preprocess(b, sources)
    flags = _unit_flags(b)
    if b.stage is Stage.ASSEMBLY:
        return [_to_assembly(b, src, flags) for src in sources]
    if b.stage is Stage.OBJECT:
        outs = [b.output or Path(src.path.with_suffix(".o").name) for src in sources]
        for src, out in zip(sources, outs, strict=True):
            def compile_to(tmp: Path, src: Source = src, out: Path = out) -> None:
                compile_unit(src.path, tmp, isolation=b.isolation,
                             flags=[*flags, *_dep_flags(b, out)], compiler=b.compiler,
                             lang=src.lang, as_flags=b.as_flags, level=b.level)
            _write(out, compile_to)
        return outs
    return [_link(b, flags)]


def _unit_flags(b: Build) -> list[str]:
    cc = find_compiler(b.compiler)
    # A first build of the sandbox libc takes a minute or two: say so on stderr.
    prefix = libc.ensure_libc(b.isolation, progress=True)
    flags = ["-O2", *b.cflags]  # (a later -O of the user's wins)
    flags += ["-nostdinc", "-isystem", str(prefix / "include"), "-isystem", cc.include_dir,
              "-isystem", str(link.INCLUDE_DIR)]
    # Debug information is where the link step reads exports' and imports' C signatures
    # (link.signatures); it does not change the code, and the image is linked without it.
    # Names inline, not in .debug_str: readable without relocating (toolchain.signatures).
    flags += ["-g", "-gno-split-dwarf", "-fno-merge-debug-strings"]
    return flags


def _dep_flags(b: Build, out: Path) -> list[str]:
    """-MD/-MMD name their file and target after the object, as gcc does (the compiler
    itself only sees `-S -o -`)."""
    if not {"-MD", "-MMD"} & set(b.cflags):
        return []
    flags = [] if any(f.startswith("-MF") for f in b.cflags) else [
        "-MF", str(out.with_suffix(".d"))]
    if not any(f.startswith(("-MT", "-MQ")) for f in b.cflags):
        flags += ["-MT", str(out)]
    return flags


def _write(out: Path, make: Callable[[Path], object]) -> None:
    """make(tmp) writes a file that is then renamed to out: never a half-written out."""
    where = staging_dir(out)
    tmp = (where or Path(tempfile.gettempdir())) / f".{out.name}.tmp{os.getpid()}"
    try:
        make(tmp)
        publish(tmp, out)
    except OSError as e:
        raise ToolchainError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _preprocess(b: Build, sources: list[Source]) -> list[Path]:
    """-E (and -M, -MM): the compiler's preprocessor with the sandbox's headers and flags;
    its output goes where gcc's would (stdout, or -o)."""
    gcc = [*compiler_command(_unit_flags(b), isolation=b.isolation, compiler=b.compiler,
                             lang=sources[0].lang, level=b.level), "-E"]
    for src in sources:
        gcc += ["-x", src.lang.value, str(src.path)]
    if b.output is not None:
        gcc += ["-o", str(b.output)]
    res = subprocess.run(gcc)
    if res.returncode:
        raise ToolchainError(f"preprocessing failed (exit {res.returncode})")
    return [] if b.output is None else [b.output]


def _to_assembly(b: Build, src: Source, flags: list[str]) -> Path:
    """-S: the compiler's assembly for the sandbox (its flags and headers), before the
    rewriter, so that `tmebox cc -c x.s` instruments it like any assembly source."""
    out = b.output or Path(src.path.with_suffix(".s").name)
    if src.lang is not Lang.C:
        raise ToolchainError(f"{src.path}: -S takes C sources")
    gcc = [*compiler_command([*flags, *_dep_flags(b, out)], isolation=b.isolation,
                             compiler=b.compiler, lang=Lang.C, level=b.level),
           "-S", "-o", "-", str(src.path)]
    text = run(gcc, f"compiling {src.path}", show_warnings=True)
    _write(out, lambda tmp: tmp.write_text(text))
    return out


def _link(b: Build, flags: list[str]) -> Path:
    output = b.output or Path("a.out")
    archives, libs = _libraries(b)
    with tempfile.TemporaryDirectory(prefix="tmebox-cc-") as build_dir:
        objects: list[Path] = []
        todo: list[tuple[Source, Path]] = []
        for n, i in enumerate(b.inputs):
            if isinstance(i, Source):
                obj = Path(build_dir) / f"{n}-{i.path.stem}.o"
                todo.append((i, obj))
                objects.append(obj)
            elif isinstance(i, Linked):
                (archives if i.path.suffix == ".a" else objects).append(i.path)
        # The compiler runs in a subprocess, so threads compile files in parallel;
        # map() re-raises the first failure in source order.
        with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1) or 1) as pool:
            list(pool.map(lambda job: compile_unit(
                job[0].path, job[1], isolation=b.isolation, flags=flags,
                compiler=b.compiler, lang=job[0].lang, as_flags=b.as_flags, level=b.level),
                todo))
        try:
            link.link_image(objects, output, isolation=b.isolation, libs=libs,
                            archives=archives, ld_flags=b.ld_flags, stack_size=b.stack_size,
                            launcher=b.launcher, level=b.level)
        except OSError as e:
            raise ToolchainError(f"cannot write {output}: {e.strerror or e}") from None
    return output


def _libraries(b: Build) -> tuple[list[Path], list[str]]:
    """-l names: archives found in the -L directories (in order, first match), or parts of
    the sandbox libc. Host libraries are never searched: they are not instrumented."""
    archives: list[Path] = []
    libs: list[str] = []
    for i in b.inputs:
        if not isinstance(i, Library):
            continue
        found = next((d / f"lib{i.name}.a" for d in b.lib_dirs
                      if (d / f"lib{i.name}.a").is_file()), None)
        if found is not None:
            archives.append(found)
        elif i.name in link.SUPPORTED_LIBS:
            libs.append(i.name)
        else:
            shared = next((d / f"lib{i.name}.so" for d in b.lib_dirs
                           if (d / f"lib{i.name}.so").exists()), None)
            where = (f"only {shared}, a shared library, which a sandbox cannot load"
                     if shared else
                     f"no lib{i.name}.a in the -L directories "
                     f"({', '.join(map(str, b.lib_dirs)) or 'none given'})")
            raise ToolchainError(f"-l{i.name}: {where}; build it with `tmebox cc -c` and "
                                 "`ar rcs`, or use one of the sandbox libc's "
                                 f"{', '.join('-l' + x for x in link.SUPPORTED_LIBS)}")
    return archives, libs


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
