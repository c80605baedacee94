"""`tmebox cc`'s command line: gcc's interface, so that `make CC="tmebox cc"` and
`./configure CC="tmebox cc"` work unchanged (docs/toolchain.md, "A compiler for real builds").

Every option is handled here, passed through to the compiler (which then judges it, as gcc
would), or refused with a one-line reason naming it. The options of tmebox's own are
`--isolation MODE` and `--cc NAME`. What a run does is a `cc.Build`; cc does it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tmebox.errors import ToolchainError
from tmebox.toolchain import cc
from tmebox.toolchain.cc import Build, Library, Linked, Source, Stage
from tmebox.toolchain.unit import Lang, find_compiler, language_of
from tmebox.trusted import abi
from tmebox.trusted.cpu import host_level
from tmebox.trusted.image import CpuLevel

__all__ = ["TARGET_TRIPLE", "UsageError", "launcher", "main", "parse"]

TARGET_TRIPLE = "x86_64-tmebox-linux-musl"

HELP = f"""\
usage: tmebox cc [gcc options] FILE...

Compiles C (.c) and assembly (.s, .S) into instrumented objects and links them, with
instrumented objects and archives (.o, .a, -lNAME from -L directories) and the sandbox libc,
into a verified sandbox image. gcc's options work as with gcc: -c -S -E -o -x -O -g -W -f -m
-std -D -U -I -include -isystem -M* -Wl, -Wa, -Wp, -Xlinker -L -l -pthread --version ...
An image not named *.box starts with a #! line, so it runs as a program (`./a.out`).

tmebox's own options:
  --isolation MODE   {' or '.join(abi.ISOLATION_MODES)} (default {abi.DEFAULT_ISOLATION})
  --target LEVEL     the CPU level: {', '.join(abi.CPU_LEVELS)} (default x86-64);
                     -march=LEVEL says the same, -march=native picks this machine's
  --cc NAME          the system compiler: gcc (default) or clang
"""


class UsageError(ToolchainError):
    """A command line tmebox cc cannot do; the message names the option."""


# Compiler options whose value is always the next argument (so it is not an input).
_SEPARATE = ("-include", "-imacros", "-isystem", "-iquote", "-idirafter", "-iprefix",
             "-iwithprefix", "-iwithprefixbefore", "-isysroot", "-imultilib",
             "-Xpreprocessor", "--param", "-aux-info")

# Refused, with why: the sandbox cannot have what the option asks for.
_REFUSED = {
    "-shared": "a sandbox image is static; build a static archive (ar rcs libx.a x.o) instead",
    "-m32": "sandbox images are x86-64", "-mx32": "sandbox images are x86-64",
    "-m16": "sandbox images are x86-64",
    "-nostdlib": "an image always links the tmebox crt and the sandbox libc",
    "-nostartfiles": "an image always starts in the tmebox crt",
    "-nodefaultlibs": "an image always links the sandbox libc",
    "-nolibc": "an image always links the sandbox libc",
    "-T": "the image layout is tmebox's linker script",
    "-e": "an image's entry is the tmebox crt's _start",
    "-p": "profiling needs a runtime the sandbox does not have",
    "-pg": "profiling needs a runtime the sandbox does not have",
    "--coverage": "coverage needs libgcov, which the sandbox does not have",
    "-fopenmp": "OpenMP needs libgomp and threads, which the sandbox does not have",
    "-fopenacc": "OpenACC needs a runtime the sandbox does not have",
    "-fsplit-stack": "split stacks keep their limit in %fs, which the sandbox does not have",
}
_REFUSED_PREFIXES = {
    "-fsanitize=": "sanitizer runtimes are not available in a sandbox",
    "-fprofile-": "profiling needs a runtime the sandbox does not have",
}
# Link-time options that change nothing for a static PIE image.
_IGNORED = {"-static", "-static-pie", "-static-libgcc", "-shared-libgcc", "-pie", "-no-pie",
            "-rdynamic", "-s", "-pipe", "-fno-lto", "-ffat-lto-objects",
            "-fno-fat-lto-objects", "-nostdinc"}
# Always the same for a sandbox, so never passed on (and never refused).
_IGNORED_PREFIXES = ("-flto", "-save-temps", "-fuse-ld=", "--sysroot", "-B")

_LANGS = {"c": Lang.C, "assembler": Lang.ASM, "assembler-with-cpp": Lang.ASM_CPP}
_STAGE_ORDER = (Stage.PREPROCESS, Stage.ASSEMBLY, Stage.OBJECT)


def _level(opt: str, name: str) -> CpuLevel:
    """A CPU level by its psABI name, or `native`: the highest this machine runs."""
    if name == "native":
        return host_level()
    if name not in abi.CPU_LEVELS:
        raise UsageError(f"{opt}={name}: a sandbox image targets a CPU level, one of "
                         f"{', '.join(abi.CPU_LEVELS)} (or native)")
    return CpuLevel(name)


def parse(argv: list[str]) -> Build | str:
    """A Build for argv, or the text to print for an information request (--version,
    -dumpmachine, -print-*, --help); UsageError for what cannot be done."""
    b = Build(inputs=[])
    args = _expand_response_files(argv)
    lang: Lang | None = None
    stages: set[Stage] = set()
    info: list[str] = []
    verbose = False
    pending: list[str] = []  # cflags not seen by the compiler yet if nothing is compiled
    i = 0

    def value(opt: str) -> str:
        nonlocal i
        arg = args[i]
        if arg != opt:
            return arg[len(opt):].removeprefix("=") if opt.startswith("--") else arg[len(opt):]
        if i + 1 >= len(args):
            raise UsageError(f"{opt}: missing argument")
        i += 1
        return args[i]

    while i < len(args):
        arg = args[i]
        if arg == "-" or not arg.startswith("-"):
            path = Path(arg)
            given = lang or language_of(path)
            if arg == "-" and given is None:
                raise UsageError("-: standard input needs -x LANG")
            if given is not None:
                b.inputs.append(Source(path, given))
            elif path.suffix in (".so",) or ".so." in path.name:
                raise UsageError(f"{arg}: a shared library cannot be linked into a sandbox "
                                 "image (link its static archive)")
            elif path.suffix in (".h", ".cc", ".cpp", ".cxx", ".C", ".m", ".f", ".f90"):
                raise UsageError(f"{arg}: tmebox cc compiles C and assembly only")
            else:
                b.inputs.append(Linked(path))  # as gcc does: the linker's to judge
        elif arg in ("--help", "-h", "-help"):
            return HELP
        elif arg == "--version":
            return _version(b.compiler)
        elif arg in ("-dumpmachine",):
            return TARGET_TRIPLE + "\n"
        elif arg in ("-dumpversion", "-dumpfullversion") or arg.startswith("-print-"):
            info.append(arg)
        elif arg == "-v":
            verbose = True
            sys.stderr.write(_version(b.compiler))
        elif arg.startswith("--isolation"):
            b.isolation = value("--isolation")
            if b.isolation not in abi.ISOLATION_MODES:
                raise UsageError(f"--isolation {b.isolation}: use one of "
                                 f"{', '.join(abi.ISOLATION_MODES)}")
        elif arg.startswith("--cc"):
            b.compiler = value("--cc")
        elif arg.startswith("--target"):
            b.level = _level("--target", value("--target"))
        elif arg.startswith("-march="):
            b.level = _level("-march", arg[len("-march="):])
        elif arg in ("-c", "-S", "-E"):
            stages.add(Stage(arg))
        elif arg in ("-M", "-MM"):
            stages.add(Stage.PREPROCESS)
            b.cflags.append(arg)
        elif arg.startswith("-o"):
            b.output = Path(value("-o"))
        elif arg.startswith("-x"):
            name = value("-x")
            if name != "none" and name not in _LANGS:
                raise UsageError(f"-x {name}: tmebox cc compiles "
                                 f"{', '.join(_LANGS)} (or -x none)")
            lang = _LANGS.get(name)
        elif arg.startswith("-L"):
            b.lib_dirs.append(Path(value("-L")))
        elif arg.startswith("-l"):
            b.inputs.append(Library(value("-l")))
        elif arg.startswith("-Wl,"):
            b.ld_flags += [f for f in arg[4:].split(",") if f]
        elif arg == "-Xlinker":
            b.ld_flags.append(_next(args, i, arg))
            i += 1
        elif arg in ("-u", "-z"):
            b.ld_flags += [arg, _next(args, i, arg)]
            i += 1
        elif arg.startswith("-Wa,"):
            b.as_flags += [f for f in arg[4:].split(",") if f]
        elif arg == "-Xassembler":
            b.as_flags.append(_next(args, i, arg))
            i += 1
        elif arg in _REFUSED:
            raise UsageError(f"{arg}: {_REFUSED[arg]}")
        elif arg.startswith(tuple(_REFUSED_PREFIXES)):
            reason = next(r for p, r in _REFUSED_PREFIXES.items() if arg.startswith(p))
            raise UsageError(f"{arg}: {reason}")
        elif arg in _IGNORED or arg.startswith(_IGNORED_PREFIXES):
            pass
        elif arg == "-pthread":
            b.cflags.append(arg)  # (the compiler defines _REENTRANT; libc holds pthreads)
        elif arg.startswith(("-I", "-D", "-U", "-MF", "-MT", "-MQ")):
            opt = next(o for o in ("-MF", "-MT", "-MQ", "-I", "-D", "-U") if arg.startswith(o))
            b.cflags += [opt, value(opt)]
        elif arg in _SEPARATE:
            b.cflags += [arg, _next(args, i, arg)]
            pending += b.cflags[-2:]
            i += 1
        elif arg.startswith("@"):
            raise UsageError(f"{arg}: cannot read the response file")
        else:
            b.cflags.append(arg)  # -W -f -m -g -O -std -ansi -pedantic -w -C -P -dM ...
            pending.append(arg)
        i += 1

    if info:
        return _ask_compiler(b.compiler, info)
    if len(stages) > 0:
        b.stage = next(s for s in _STAGE_ORDER if s in stages)
    if b.output is not None and str(b.output) == "-" and b.stage is not Stage.PREPROCESS:
        raise UsageError("-o -: only -E writes to standard output")
    if not b.sources() and pending:
        _check_flags(b.compiler, pending)
    if not b.inputs:
        if verbose:
            return ""  # (gcc -v alone: the version, already written)
        raise UsageError("no input files")
    if b.stage is Stage.IMAGE and (b.output is None or b.output.suffix != ".box"):
        b.launcher = launcher()
    if b.output is not None and str(b.output) == "-":
        b.output = None
    return b


def _next(args: list[str], i: int, opt: str) -> str:
    if i + 1 >= len(args):
        raise UsageError(f"{opt}: missing argument")
    return args[i + 1]


def _expand_response_files(argv: list[str]) -> list[str]:
    """@FILE: the options written in FILE, as gcc reads them (one level deep)."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("@") and os.path.isfile(arg[1:]):
            try:
                out += shlex.split(Path(arg[1:]).read_text())
            except (OSError, ValueError) as e:
                raise UsageError(f"{arg}: cannot read the response file: {e}") from None
        else:
            out.append(arg)
    return out


def _version(compiler_name: str) -> str:
    compiler = find_compiler(compiler_name)
    res = subprocess.run([compiler.path, "--version"], capture_output=True, text=True)
    first = res.stdout.splitlines()[0] if res.stdout else compiler_name
    return (f"tmebox cc (sandbox images for {TARGET_TRIPLE}; isolation "
            f"{' or '.join(abi.ISOLATION_MODES)})\ninstrumenting {first}\n")


def _ask_compiler(compiler: str, info: list[str]) -> str:
    """-dumpversion, -print-prog-name=ld and the like: the system compiler's answer."""
    res = subprocess.run([find_compiler(compiler).path, *info], capture_output=True, text=True)
    if res.returncode:
        raise UsageError(res.stderr.strip().splitlines()[-1] if res.stderr.strip()
                         else f"{' '.join(info)}: the compiler failed")
    return res.stdout


def _check_flags(compiler: str, flags: list[str]) -> None:
    """Options meant for the compiler when nothing is compiled: let it judge them, as gcc's
    driver would, on an empty unit."""
    res = subprocess.run([find_compiler(compiler).path, *flags, "-fsyntax-only", "-x", "c",
                          os.devnull], capture_output=True, text=True)
    if res.returncode:
        lines = [ln for ln in res.stderr.splitlines() if "error" in ln]
        raise UsageError((lines or res.stderr.strip().splitlines() or ["bad option"])[0])


def launcher() -> str | None:
    """`tmebox exec` by the absolute path of the tmebox that is running (or the one on
    PATH); None if there is none to name (the image is then not a program)."""
    running = [sys.argv[0]] if Path(sys.argv[0]).name == "tmebox" else []
    for c in [*running, str(Path(sys.executable).with_name("tmebox")), shutil.which("tmebox")]:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            line = f"{Path(c).resolve()} exec"
            # (a #! line splits at the first blank, and the kernel reads LAUNCHER_MAX bytes)
            if len(line) + 3 <= abi.LAUNCHER_MAX and " " not in line[:-5]:
                return line
    return None


def main(argv: list[str]) -> int:
    """`tmebox cc ARGS`: 0, or ToolchainError (the CLI prints it as one line)."""
    parsed = parse(argv)
    if isinstance(parsed, str):
        sys.stdout.write(parsed)
        return 0
    if parsed.output is not None and not parsed.output.parent.is_dir():
        # (gcc does not make directories; the Python API's build() does)
        raise UsageError(f"-o {parsed.output}: directory {parsed.output.parent} does not "
                         "exist")
    wanted = parsed.output is None or parsed.output.suffix != ".box"
    if parsed.stage is Stage.IMAGE and wanted and parsed.launcher is None:
        print("tmebox cc: warning: no tmebox command found to name in the image's #! line: "
              "run it with `tmebox run`", file=sys.stderr)
    cc.run_build(parsed)
    return 0
