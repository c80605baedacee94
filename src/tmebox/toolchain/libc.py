"""The sandbox libc: musl 1.2.3 from Debian's source packages, built through the rewriter.

`ensure_libc(mode)` returns a prefix with `lib/libc.a`, `include/`, the tmebox
crt and the runtime-page object for that isolation mode, building it once into
~/.cache/tmebox/libc/<musl version>-<key>/<mode>/ (key = hash of everything the
build depends on: unit.py, the rewriter, the nop merge, abi.py, this file, data/).
Builds happen in a temporary directory that is renamed into place at the end,
under a file lock, so a half-built libc is never used. docs/toolchain.md lists
what the build changes in musl and why.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tmebox.errors import LibcError, ToolchainError
from tmebox.toolchain import unit
from tmebox.toolchain.archive import safe_extract
from tmebox.trusted import abi, cache

MODES = ("data", "code+data")
# Plain musl for native baselines (benchmarks, run-tests that compare outputs).
NATIVE = unit.NATIVE
BUILD_MODES = (*MODES, NATIVE)

MUSL_VERSION = "1.2.3"
MUSL_DEBIAN_VERSION = "1.2.3-1"
MUSL_TARBALL = f"musl_{MUSL_VERSION}.orig.tar.gz"
MUSL_SHA256 = "7d5b0b6062521e4627e099e4c9dc8248d32a30285e959b7eecaa780cf8cfd4a4"

CRT_OBJECT = "tmebox_crt1.o"
# Files of data/ that go into the libc prefix (the linker script does not).
LIBC_DATA_FILES = ("crt.c", "setjmp.s", "syscall_cp.s", "builtins.c", "cpu_model.c")

APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
OUR_APT_SOURCE = APT_SOURCES_DIR / "tmebox-src.sources"

_TOOLCHAIN_DIR = Path(__file__).parent


def cache_dir() -> Path:
    """The shared, content-addressed cache (tmebox.trusted.cache.shared): ~/.cache/tmebox."""
    return cache.shared()


# ---------------------------------------------------------------------------
# fetching the source


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _deb_src_stanzas() -> list[str]:
    """deb-src entries mirroring the machine's own `deb` entries (deb822 and one-line form)."""
    stanzas: list[str] = []
    for path in sorted(APT_SOURCES_DIR.glob("*.sources")):
        if path == OUR_APT_SOURCE:
            continue
        for block in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in block.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            lines = ["Types: deb-src"]
            for key in ("URIs", "Suites", "Components", "Signed-By"):
                if key.lower() in fields:
                    lines.append(f"{key}: {fields[key.lower()]}")
            stanzas.append("\n".join(lines))
    one_line = [Path("/etc/apt/sources.list"), *sorted(APT_SOURCES_DIR.glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                opts = [p for p in parts[1:] if p.startswith("[")]
                rest = [p for p in parts[1:] if not p.startswith("[")]
                signed = [o.strip("[]").split("=", 1)[1] for o in opts
                          if o.strip("[]").startswith("signed-by=")]
                lines = ["Types: deb-src", f"URIs: {rest[0]}", f"Suites: {rest[1]}"]
                if rest[2:]:
                    lines.append(f"Components: {' '.join(rest[2:])}")
                if signed:
                    lines.append(f"Signed-By: {signed[0]}")
                stanzas.append("\n".join(lines))
    return stanzas


def _apt(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    return subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, text=True, env=env)


def fetch_musl(progress: bool = False) -> Path:
    """The hash-checked musl source tarball, downloaded with `apt-get source` if needed."""
    src_dir = cache_dir() / "src"
    tarball = src_dir / MUSL_TARBALL
    if tarball.is_file() and _sha256(tarball) == MUSL_SHA256:
        return tarball
    hint = (f"put {MUSL_TARBALL} (sha256 {MUSL_SHA256}) into {src_dir} by hand, or run "
            "`tmebox setup` as root on a Debian bookworm machine")
    if shutil.which("apt-get") is None:
        raise LibcError(f"cannot fetch musl {MUSL_VERSION}: apt-get is not available; {hint}")
    src_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"tmebox: fetching musl {MUSL_DEBIAN_VERSION} from Debian's source packages",
              file=sys.stderr)
    res = _apt(["source", "--download-only", f"musl={MUSL_DEBIAN_VERSION}"], cwd=src_dir)
    if res.returncode != 0:
        if not OUR_APT_SOURCE.exists():
            stanzas = _deb_src_stanzas()
            if not stanzas:
                raise LibcError(f"cannot fetch musl: no Debian package sources configured in "
                                f"{APT_SOURCES_DIR}; {hint}")
            try:
                OUR_APT_SOURCE.write_text(
                    "# Added by tmebox setup: Debian's source packages (for musl).\n"
                    + "\n\n".join(stanzas) + "\n")
            except OSError as e:
                raise LibcError(f"cannot fetch musl: writing {OUR_APT_SOURCE} failed "
                                f"({e.strerror}; run as root); {hint}") from None
        upd = _apt(["update"])
        if upd.returncode != 0:
            raise LibcError(f"cannot fetch musl: apt-get update failed: "
                            f"{upd.stderr.strip().splitlines()[-1:]}; {hint}")
        res = _apt(["source", "--download-only", f"musl={MUSL_DEBIAN_VERSION}"], cwd=src_dir)
        if res.returncode != 0:
            err = res.stderr.strip().splitlines()
            raise LibcError(f"cannot fetch musl: apt-get source failed: "
                            f"{err[-1] if err else res.returncode}; {hint}")
    if not tarball.is_file():
        raise LibcError(f"apt-get source did not produce {tarball}; {hint}")
    digest = _sha256(tarball)
    if digest != MUSL_SHA256:
        tarball.unlink()
        raise LibcError(f"{MUSL_TARBALL} has sha256 {digest}, expected {MUSL_SHA256}: deleted; "
                        f"{hint}")
    return tarball


# ---------------------------------------------------------------------------
# the build


def _key_files() -> list[Path]:
    names = ("unit.py", "asm_syntax.py", "rewriter.py", "nopmerge.py", "loops.py",
             "../trusted/abi.py", "libc.py")
    files = [_TOOLCHAIN_DIR / name for name in names]
    return files + [_TOOLCHAIN_DIR / "data" / name for name in LIBC_DATA_FILES]


def build_key(mode: str = "data") -> str:
    """Hash of the files a built libc depends on; a change means a rebuild.

    The one-unit step (unit.py, the rewriter, the nop merge, the loop pads), the ABI, this
    file and the crt.
    Plain musl (native) depends on neither the rewriter nor the crt.
    """
    if mode == NATIVE:
        return "native-" + cache.fingerprint([_TOOLCHAIN_DIR / "libc.py"], MUSL_SHA256)
    return cache.fingerprint(_key_files(), MUSL_SHA256)


def libc_dir(mode: str) -> Path:
    """Where the libc of a mode lives in the cache (built or not)."""
    return cache_dir() / "libc" / f"{MUSL_VERSION}-{build_key(mode)}" / mode


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_libc(mode: str, progress: bool = False) -> Path:
    """Prefix dir of the sandbox libc for mode (lib/libc.a, include/), built if not cached."""
    if mode not in BUILD_MODES:
        raise LibcError(f"unknown libc mode {mode!r}: choose one of {', '.join(BUILD_MODES)}")
    dest = libc_dir(mode)
    if (dest / "lib" / "libc.a").is_file():
        return dest
    with _locked(dest.parent / f".{mode}.lock"):
        if (dest / "lib" / "libc.a").is_file():  # built by someone else meanwhile
            return dest
        tarball = fetch_musl(progress)
        dest.parent.mkdir(parents=True, exist_ok=True)
        build_prefix = f".build-{mode.replace('+', '_')}-"
        # Left by a build that was killed; under the lock nobody else is using them.
        for stale in dest.parent.glob(build_prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=build_prefix, dir=dest.parent) as tmp:
            prefix = _build(tarball, Path(tmp), mode, progress)
            os.replace(prefix, dest)
    return dest


def _patch_tree(tree: Path) -> None:
    """Changes to musl for the sandbox (docs/toolchain.md, "What the build changes")."""
    data = _TOOLCHAIN_DIR / "data"
    x86 = "x86_64"
    # setjmp/longjmp save and restore %r14, the window base the sandbox may not write.
    (tree / "src/setjmp" / x86 / "longjmp.s").unlink()
    shutil.copy(data / "setjmp.s", tree / "src/setjmp" / x86 / "setjmp.s")
    # __syscall_cp_asm keeps a live value in %r11, the rewriter's scratch register.
    shutil.copy(data / "syscall_cp.s", tree / "src/thread" / x86 / "syscall_cp.s")
    # __clone ends in `hlt` and starts threads the runtime does not offer: use musl's
    # generic __clone, which returns -ENOSYS.
    (tree / "src/thread" / x86 / "clone.s").unlink()
    # a_crash() is `hlt`, a privileged instruction the verifier rejects; ud2 traps too.
    atomic = tree / "arch" / x86 / "atomic_arch.h"
    text = atomic.read_text()
    if '"hlt"' not in text:
        raise LibcError(f"unexpected musl source: no hlt in {atomic}")
    atomic.write_text(text.replace('"hlt"', '"ud2"'))
    # Compiler support routines and the cpu model that libgcc would provide.
    (tree / "src" / "tmebox").mkdir()
    for name in ("builtins.c", "cpu_model.c"):
        shutil.copy(data / name, tree / "src" / "tmebox" / name)


def _count_sources(tree: Path) -> int:
    n = 0
    for d in (tree / "src").iterdir():
        if d.is_dir():
            n += len(list(d.glob("*.c")))
    return n + len(list((tree / "src/malloc/mallocng").glob("*.c")))


def _build(tarball: Path, work: Path, mode: str, progress: bool) -> Path:
    try:
        with tarfile.open(tarball) as tf:
            safe_extract(tf, work)
    except (OSError, tarfile.TarError) as e:
        raise LibcError(f"cannot extract {tarball}: {e}") from None
    tree = work / f"musl-{MUSL_VERSION}"
    prefix = work / "prefix"
    if mode != NATIVE:
        _patch_tree(tree)
    env = dict(os.environ, LC_ALL="C", CC="gcc", CROSS_COMPILE="")
    _step(["./configure", "--target=x86_64", "--disable-shared", f"--prefix={prefix}"],
          tree, env, "configure")
    jobs = os.cpu_count() or 2
    make = ["make", f"-j{jobs}"]
    if mode == NATIVE:
        targets = ["lib/libc.a", "lib/crt1.o", "lib/crti.o", "lib/crtn.o"]
        _make([*make, "AR=ar", "RANLIB=ranlib", *targets], tree, env, progress,
              total=_count_sources(tree), label="building native musl")
    else:
        # make runs the compiler only (each "object" is the compiler's assembly
        # text); the rewriting and assembling then happen in this process, not
        # in ~1,300 Python start-ups.
        wrapper = work / "tmebox-cc"
        wrapper.write_text(_WRAPPER.replace("@CC@", unit.find_compiler("gcc").path))
        wrapper.chmod(0o755)
        # Appended to config.mak, not given on the command line, so that the
        # Makefile's own per-file additions (-O3 for string/malloc) still apply.
        with (tree / "config.mak").open("a") as f:
            f.write(f"CFLAGS += {' '.join(unit.sandbox_cflags(mode))}\n")
        _make([*make, f"CC={wrapper}", "AR=true", "RANLIB=true", "lib/libc.a"], tree, env,
              progress, total=_count_sources(tree), label=f"compiling sandbox libc ({mode})")
        # configure may set AOBJS = LOBJS (the compiler makes PIC anyway): .lo files
        objects = sorted(p for p in (tree / "obj" / "src").rglob("*") if p.suffix in (".o", ".lo"))
        if len(objects) < _count_sources(tree) // 2:
            raise LibcError(f"the musl build produced only {len(objects)} objects")
        _instrument(objects, tree, mode, progress, jobs)
        lib = tree / "lib"
        lib.mkdir(exist_ok=True)
        _step(["ar", "rcs", str(lib / "libc.a"), *[str(o.relative_to(tree)) for o in objects]],
              tree, env, "archiving")
        targets = ["lib/libc.a"]
    _step(["make", f"prefix={prefix}", "install-headers"], tree, env, "installing headers")
    lib = prefix / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    for t in targets:
        shutil.copy(tree / t, lib / Path(t).name)
    if mode != NATIVE:
        _build_crt(prefix, mode)
    return prefix


# make's CC in the sandbox modes: `CC <flags> -c -o OUT SRC` -> the assembly of SRC in OUT.
_WRAPPER = """#!/bin/sh
out= src= take=
for a do
    shift
    if [ -n "$take" ]; then out=$a; take=; continue; fi
    case $a in
        -c|-pipe|-Wa,*) continue ;;
        -o) take=1; continue ;;
        *.c|*.s|*.S) src=$a ;;
    esac
    set -- "$@" "$a"
done
case $src in
    *.c) exec '@CC@' "$@" -S -o "$out" ;;
    *.S) exec '@CC@' "$@" -E -P -o "$out" ;;
    *.s) exec cp "$src" "$out" ;;
esac
echo "tmebox libc cc: no C or assembly source in: $*" >&2
exit 2
"""


def _source_of(obj: Path, tree: Path) -> str:
    """musl source file an object was made from (for error messages)."""
    rel = obj.relative_to(tree / "obj").with_suffix("")
    for suffix in (".c", ".s", ".S"):
        if (tree / rel).with_suffix(suffix).is_file():
            return str(rel.with_suffix(suffix))
    return str(rel)


def _instrument_one(job: tuple[str, str, str]) -> str | None:
    obj, source, mode = job
    path = Path(obj)
    try:
        unit.assemble(path.read_text(), path, isolation=mode, source=source)
    except ToolchainError as e:
        return f"{source}: {e}" if not str(e).startswith(source) else str(e)
    return None


def _instrument(objects: list[Path], tree: Path, mode: str, progress: bool, jobs: int) -> None:
    """Rewrite and assemble every object's assembly text in place.

    Threads, not processes: the rewriter takes well under a millisecond per file
    and `as` runs as a subprocess, so threads keep the cores busy without
    re-importing anything or forking a caller that has threads of its own.
    """
    from concurrent.futures import ThreadPoolExecutor

    work = [(str(o), _source_of(o, tree), mode) for o in objects]
    errors: list[str] = []
    with _progress_bar(progress, len(work), f"instrumenting sandbox libc ({mode})") as tick, \
            ThreadPoolExecutor(max_workers=2 * jobs) as pool:
        for err in pool.map(_instrument_one, work):
            tick()
            if err:
                errors.append(err)
    if errors:
        shown = "\n".join(errors[:10])
        more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise LibcError(f"instrumenting the sandbox libc ({mode}) failed for "
                        f"{len(errors)} file(s):\n{shown}{more}")


def _build_crt(prefix: Path, mode: str) -> None:
    lib = prefix / "lib"
    compiler = unit.find_compiler("gcc")
    flags = ["-O2", "-nostdinc", "-isystem", str(prefix / "include"), "-isystem",
             compiler.include_dir, f"-DTMEBOX_SYS_PARK={abi.SYS_TMEBOX_PARK:#x}"]
    try:
        unit.compile_unit(_TOOLCHAIN_DIR / "data" / "crt.c", lib / CRT_OBJECT, isolation=mode,
                        flags=flags)
    except ToolchainError as e:
        raise LibcError(f"building the tmebox crt ({mode}) failed: {e}") from None


def _step(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-20:])
        raise LibcError(f"musl {what} failed (exit {res.returncode}):\n{tail}")


def _make(cmd: list[str], cwd: Path, env: dict[str, str], progress: bool, total: int,
          label: str) -> None:
    """Run make, counting compiled files for progress; on failure show the errors."""
    log: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        bar = _progress_bar(progress, total, label)
        with bar as update:
            for line in proc.stdout:
                log.append(line.rstrip("\n"))
                if " -c -o " in line:
                    update()
        proc.wait()
    if proc.returncode != 0:
        errors = [ln for ln in log if "error" in ln.lower() or ln.startswith("tmebox")]
        tail = "\n".join((errors or log)[-20:])
        raise LibcError(f"{label} failed:\n{tail}")


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, label: str) -> Iterator:
    if not enabled:
        yield lambda: None
        return
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=False) as prog:
            task = prog.add_task(label, total=total)
            yield lambda: prog.advance(task)
        return
    state = {"n": 0, "t": time.monotonic()}

    def tick() -> None:
        state["n"] += 1
        if time.monotonic() - state["t"] > 10:
            state["t"] = time.monotonic()
            print(f"tmebox: {label}: {state['n']}/{total} files", file=sys.stderr)

    print(f"tmebox: {label} (~{total} files)", file=sys.stderr)
    yield tick
    print(f"tmebox: {label}: done", file=sys.stderr)
