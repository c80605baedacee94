"""Whole programs: what a user pays to run a real command-line program in a sandbox.

Real programs from Debian's source packages (none of them a library the workloads
already use), each built by its own build system three ways: the baseline with a gcc
wrapper for plain static musl (`baseline_cc`: the same musl and the same flags as the
sandbox builds minus the instrumentation), data and code+data with `CC="tmebox cc
--isolation MODE"`. Each is run whole on a fixed generated input, stdin from a file and
stdout to a file, and timed as a whole by CPU time, user and system, system calls
included: the baseline as a process (`os.wait4`'s rusage of exec to exit), a sandbox
under one tmebox.Runtime (the process's rusage across spawn, run and destroy; the image
is loaded once, as a host that runs a program many times does). Outputs must agree
byte for byte. Builds are cached under ~/.cache/tmebox/bench/programs/.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shlex
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmebox.bench import fetch, stats
from tmebox.bench.build import gcc_version, libgcc, publish_dir
from tmebox.bench.errors import BenchError
from tmebox.bench.overhead import Sample
from tmebox.bench.workloads import BASELINE, VARIANTS, baseline_cflags
from tmebox.toolchain import libc, unit

__all__ = ["PROGRAMS", "Program", "build", "measure", "selected"]


@dataclass(frozen=True)
class Program:
    """One program: where it comes from, how it is built, how it is driven."""

    name: str
    kind: str
    package: fetch.SourcePackage
    build: str  # sh, in a copy of the source tree, with $CC the compiler
    binary: str  # the program, relative to the tree
    args: tuple[str, ...]
    make_input: Callable[[int], bytes]  # deterministic in its scale
    scale: int
    quick_scale: int

    def fingerprint(self) -> dict[str, Any]:
        return {"package": self.package.key, "build": self.build, "binary": self.binary}


# -- inputs: fixed pseudo-random text of a given size -----------------------------------------

def _vocabulary(rng: random.Random) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10)))
            for _ in range(4000)]


def _text(size: int) -> bytes:
    rng = random.Random(1)
    vocab = _vocabulary(rng)
    lines, n = [], 0
    while n < size:
        words = rng.choices(vocab, k=rng.randint(4, 14))
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        line = " ".join(words) + rng.choice((".", ",", ";", "")) + "\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


def _repeated_text(size: int) -> bytes:
    # a checksum runs at GB/s: a large input, made of a smaller one quickly
    part = _text(min(size, 8 << 20))
    return (part * (size // len(part) + 1))[:size]


def _markdown(size: int) -> bytes:
    rng = random.Random(2)
    vocab = _vocabulary(rng)
    out, n = [], 0

    def words(k: int) -> str:
        ws = rng.choices(vocab, k=k)
        for i in rng.sample(range(k), k // 5):
            ws[i] = rng.choice(("*{}*", "**{}**", "`{}`", "[{}](http://x.org/{})")).format(
                ws[i], ws[i])
        return " ".join(ws)

    while n < size:
        block = rng.choice((
            lambda: "#" * rng.randint(1, 3) + " " + words(5),
            lambda: "\n".join(words(12) for _ in range(rng.randint(2, 6))),
            lambda: "\n".join("- " + words(6) for _ in range(rng.randint(2, 5))),
            lambda: "\n".join("    " + words(4) for _ in range(3)),
            lambda: "> " + words(15),
        ))() + "\n\n"
        out.append(block)
        n += len(block)
    return "".join(out).encode()


def _bc_program(digits: int) -> bytes:
    # pi and e to `digits` places, then a series summed at that precision
    return (f"scale={digits}\n4*a(1)\ne(1)\n"
            f"s=0\nfor (i = 1; i <= {digits // 4}; i++) s += sqrt(i) / i\ns\n").encode()


# -- the programs ---------------------------------------------------------------------------

def _pkg(name: str, version: str, tarball: str, sha256: str) -> fetch.SourcePackage:
    return fetch.SourcePackage(name, version, tarball, sha256)


_MAKE = "make -j2"
PROGRAMS: dict[str, Program] = {p.name: p for p in (
    Program("gzip", "compressor",
            _pkg("gzip", "1.12-1", "gzip_1.12.orig.tar.xz",
                 "ce5e03e519f637e1f814011ace35c4f87b33c0bbabeec35baf5fbd3479e91956"),
            f'./configure CC="$CC" --disable-dependency-tracking && {_MAKE}', "gzip",
            ("-n", "-6"), _text, 8 << 20, 128 << 10),
    Program("lz4", "compressor",
            _pkg("lz4", "1.9.4-1", "lz4_1.9.4.orig.tar.gz",
                 "0b0e3aa07c8c063ddf40b082bdf7e37a1562bda40a0ff5272957f3e987e0e54b"),
            f'{_MAKE} -C programs lz4 CC="$CC"', "programs/lz4", ("-9", "-c"), _text,
            8 << 20, 128 << 10),
    Program("zstd", "compressor",
            _pkg("libzstd", "1.5.4+dfsg2-5", "libzstd_1.5.4+dfsg2.orig.tar.xz",
                 "8cf4bbb65e77ec348d052c8d6230eba66d435bddf64c8b5be2fcb16880c19953"),
            f'{_MAKE} -C programs zstd CC="$CC" HAVE_THREAD=0 HAVE_ZLIB=0 HAVE_LZMA=0 '
            "HAVE_LZ4=0 ZSTD_LEGACY_SUPPORT=0 ZSTD_NO_ASM=1", "programs/zstd",
            ("-6", "-c", "-q"), _text, 8 << 20, 128 << 10),
    Program("compress", "compressor",
            _pkg("ncompress", "4.2.4.6-6", "ncompress_4.2.4.6.orig.tar.gz",
                 "fb7b6a00060bd4c6e35ba4cc96a5ca7e78c193e6267487dd53376d80e061836b"),
            f'{_MAKE} compress CC="$CC"', "compress", ("-c",), _text, 16 << 20, 256 << 10),
    Program("xxhsum", "checksum",
            _pkg("xxhash", "0.8.1-1", "xxhash_0.8.1.orig.tar.gz",
                 "3bb6b7d6f30c591dd65aaaff1c8b7a5b94d81687998ca9400082c739a690436c"),
            f'{_MAKE} xxhsum CC="$CC"', "xxhsum", ("-H0",), _repeated_text, 128 << 20,
            1 << 20),
    Program("bc", "calculator",
            _pkg("bc", "1.07.1-3", "bc_1.07.1.orig.tar.gz",
                 "62adfca89b0a1c0164c2cdca59ca210c1d44c3ffc46daf9931cf4942664cb02a"),
            f'./configure CC="$CC" && {_MAKE} -C lib && {_MAKE} -C bc', "bc/bc",
            ("-l", "-q"), _bc_program, 600, 100),
    Program("mawk", "interpreter",
            _pkg("mawk", "1.3.4.20200120-3.1", "mawk_1.3.4.20200120.orig.tar.gz",
                 "7fd4cd1e1fae9290fe089171181bbc6291dfd9bca939ca804f0ddb851c8b8237"),
            f'./configure CC="$CC" && {_MAKE} mawk', "mawk",
            ("{ for (i = 1; i <= NF; i++) { n[$i]++; len += length($i) } } "
             'END { for (w in n) if (n[w] > 200) printf "%s %d %.4f\\n", w, n[w], '
             "n[w] / NR; print NR, len }",), _text, 4 << 20, 64 << 10),
    Program("markdown", "parser",
            _pkg("discount", "2.2.7-2", "discount_2.2.7.orig.tar.gz",
                 "72c1325ddfc40871d6810f1e272cf2d45b361f26357eb38f170fd04d737bb9f2"),
            f'./configure.sh && {_MAKE} markdown', "markdown", (), _markdown,
            2 << 20, 32 << 10),
    Program("sed", "text editor",
            _pkg("sed", "4.9-1+deb12u1", "sed_4.9.orig.tar.xz",
                 "6e226b732e1cd739464ad6862bd1a1aba42d7982922da7a53519631d24975181"),
            f'./configure CC="$CC" --disable-dependency-tracking --disable-nls '
            f"--without-selinux && {_MAKE}", "sed/sed",
            ("-E", "-e", r"s/([aeiou])([a-z]+)/\2\1/g", "-e", r"/^[0-9]/d",
             "-e", r"s/[0-9]+/<&>/g"), _text, 4 << 20, 64 << 10),
)}


def selected(names: list[str] | None, quick: bool) -> list[Program]:
    """The programs asked for (all by default; quick: the two that build fastest)."""
    if not names:
        return [PROGRAMS["compress"], PROGRAMS["lz4"]] if quick else list(PROGRAMS.values())
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown:
        raise BenchError(f"unknown program(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(PROGRAMS)}")
    return [PROGRAMS[n] for n in names]


# -- builds ---------------------------------------------------------------------------------

def cache() -> Path:
    return libc.cache_dir() / "bench" / "programs"


def baseline_cc() -> Path:
    """A gcc wrapper that compiles and links against plain static musl, like the sandbox
    builds minus the instrumentation (what musl's own musl-gcc does with a specs file)."""
    prefix = libc.ensure_libc(libc.NATIVE)
    gcc = unit.find_compiler("gcc")
    flags = [*baseline_cflags(), "-nostdinc", "-isystem", str(prefix / "include"),
             "-isystem", gcc.include_dir]
    key = hashlib.sha256(json.dumps([str(prefix), gcc.path, flags]).encode()).hexdigest()[:12]
    where = cache() / f"musl-cc-{key}"
    wrapper = where / "musl-cc"
    if wrapper.is_file():
        return wrapper
    libs = where / "lib"  # -lm, -lpthread...: in musl's libc.a; empty archives as musl installs
    libs.mkdir(parents=True, exist_ok=True)
    for name in ("m", "pthread", "rt", "dl", "util", "xnet", "resolv", "crypt"):
        subprocess.run(["ar", "rc", str(libs / f"lib{name}.a")], check=True)
    lib = prefix / "lib"
    compile_flags = shlex.join([gcc.path, *flags])
    tmp = where / f".musl-cc.{os.getpid()}"
    tmp.write_text(
        "#!/bin/sh\n# tmebox bench: plain static musl (generated)\n"
        'for a; do case "$a" in -c|-S|-E|-M|-MM) exec '
        f'{compile_flags} "$@";; esac; done\n'
        f"exec {compile_flags} -static -nostdlib {shlex.quote(str(lib / 'crt1.o'))} "
        f"{shlex.quote(str(lib / 'crti.o'))} -L{shlex.quote(str(libs))} \"$@\" "
        f"-Wl,--start-group {shlex.quote(str(lib / 'libc.a'))} {shlex.quote(libgcc())} "
        f"-Wl,--end-group {shlex.quote(str(lib / 'crtn.o'))}\n")
    tmp.chmod(0o755)
    os.replace(tmp, wrapper)
    return wrapper


def _tmebox_cc(mode: str) -> str:
    script = Path(sys.executable).with_name("tmebox")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "tmebox.cli"]
    return shlex.join([*cmd, "cc", "--isolation", mode])


def _key(p: Program) -> str:
    h = hashlib.sha256(json.dumps(p.fingerprint(), sort_keys=True).encode())
    # not this file: an input's size or a table's wording must not rebuild every program
    for part in (json.dumps(baseline_cflags()), libc.build_key(), gcc_version()):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _file(p: Program, variant: str) -> str:
    return f"{p.name}.elf" if variant == BASELINE else f"{p.name}.{variant.replace('+', '_')}.box"


def build(p: Program, progress: Callable[[str], None] | None = None,
          rebuild: bool = False) -> dict[str, Path]:
    """The three builds of p (variant -> program), from the cache or built now."""
    out_dir = cache() / f"{p.name}-{_key(p)}"
    paths = {v: out_dir / _file(p, v) for v in VARIANTS}
    if not rebuild and all(f.is_file() for f in paths.values()):
        return paths
    tree = fetch.source_tree(p.package)
    compilers = {BASELINE: str(baseline_cc()), **{m: _tmebox_cc(m) for m in VARIANTS[1:]}}
    cache().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{p.name}-", dir=cache()))
    try:
        for v in VARIANTS:
            if progress:
                progress(f"building {p.name} ({v})")
            src = work / f"src-{v.replace('+', '_')}"
            shutil.copytree(tree, src, symlinks=True)
            log = cache() / f"{p.name}.{v.replace('+', '_')}.log"
            with log.open("w") as f:
                res = subprocess.run(["sh", "-c", p.build], cwd=src, stdout=f,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, "CC": compilers[v]})
            if res.returncode != 0 or not (src / p.binary).is_file():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise BenchError(f"building {p.name} ({v}) failed (exit {res.returncode}, "
                                 f"log {log}):\n{tail}")
            shutil.copy(src / p.binary, work / _file(p, v))
            shutil.rmtree(src)
        publish_dir(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return paths


# -- runs -----------------------------------------------------------------------------------

def _cpu_ns(ru: resource.struct_rusage) -> int:
    return round((ru.ru_utime + ru.ru_stime) * 1e9)


@contextmanager
def _std_streams(stdin: Path, stdout: Path) -> Iterator[None]:
    """This process's fds 0 and 1 are the files meanwhile (`prog < in > out`)."""
    with stdin.open("rb") as i, stdout.open("wb") as o:
        saved = os.dup(0), os.dup(1)
        os.dup2(i.fileno(), 0)
        os.dup2(o.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved[0], 0)
            os.dup2(saved[1], 1)
            os.close(saved[0])
            os.close(saved[1])


def _run_baseline(p: Program, exe: Path, stdin: Path, stdout: Path) -> tuple[int, int]:
    """(wall ns, CPU ns) of the process, exec to exit."""
    with stdin.open("rb") as i, stdout.open("wb") as o:
        t = time.perf_counter_ns()
        pid = os.posix_spawn(str(exe), [p.name, *p.args], {}, file_actions=[
            (os.POSIX_SPAWN_DUP2, i.fileno(), 0), (os.POSIX_SPAWN_DUP2, o.fileno(), 1)])
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter_ns() - t
    if status != 0:
        raise BenchError(f"{p.name} (baseline) exited with status "
                         f"{os.waitstatus_to_exitcode(status)}")
    return wall, _cpu_ns(ru)


def _run_sandbox(p: Program, variant: str, rt: Any, image: Any, stdin: Path,
                 stdout: Path) -> tuple[int, int]:
    """(wall ns, CPU ns) of this process across spawn, run and destroy."""
    err = bytearray()
    with _std_streams(stdin, stdout):
        r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter_ns()
        sb = rt.spawn(image, argv=[p.name, *p.args], stdin=None, stdout=None, stderr=err,
                      timeout=600)
        try:
            status = sb.run()
        finally:
            sb.destroy()
        wall, r1 = time.perf_counter_ns() - t, resource.getrusage(resource.RUSAGE_SELF)
    if status != 0:
        raise BenchError(f"{p.name} ({variant}) exited with status {status}: "
                         f"{err.decode(errors='replace').strip()[-300:]}")
    return wall, _cpu_ns(r1) - _cpu_ns(r0)


def measure(p: Program, paths: dict[str, Path], scale: int, rounds: int, rt: Any,
            workdir: Path, tick: Callable[[str], None] | None = None) -> list[Sample]:
    """One warm-up run and `rounds` interleaved timed runs of each build; every output
    must be the baseline's, byte for byte."""
    stdin = workdir / f"{p.name}.in"
    stdin.write_bytes(p.make_input(scale))
    images = {v: rt.load(paths[v]) for v in VARIANTS[1:]}
    digests: dict[str, str] = {}

    def once(v: str) -> tuple[int, int, int]:
        out = workdir / f"{p.name}.{v.replace('+', '_')}.out"
        wall, cpu = (_run_baseline(p, paths[v], stdin, out) if v == BASELINE else
                     _run_sandbox(p, v, rt, images[v], stdin, out))
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        want = digests.setdefault(BASELINE, digest) if v == BASELINE else digests[BASELINE]
        if digest != want:
            raise BenchError(f"{p.name} ({v}) wrote other output than the baseline "
                             f"(kept: {out}, {workdir / f'{p.name}.baseline.out'})")
        return wall, cpu, int(digest[:16], 16)

    for v in VARIANTS:  # warm-up: page cache, the image's verdict, lazy set-up
        once(v)
    samples = []
    for r, v in stats.interleave(VARIANTS, rounds):
        wall, cpu, check = once(v)
        samples.append(Sample(p.name, v, r, wall, cpu, check))
        if tick:
            tick(f"{p.name} {v} round {r + 1}")
    return samples
