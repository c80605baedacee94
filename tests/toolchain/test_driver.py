"""`tmebox cc`'s gcc-style command line (toolchain/driver.py): what each option becomes, what
is refused and why, and gcc's output names, end to end through the CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tmebox import cli
from tmebox.toolchain import driver
from tmebox.toolchain.cc import Build, Library, Linked, Source, Stage
from tmebox.toolchain.unit import Lang
from tmebox.trusted.image import Image


def _build(argv: list[str]) -> Build:
    b = driver.parse(argv)
    assert isinstance(b, Build), b
    return b


def test_options_are_sorted_to_compiler_assembler_and_linker() -> None:
    b = _build(["-g", "-O3", "-Wall", "-std=gnu11", "-DX=1", "-I", "inc", "-include", "c.h",
                "-MD", "-MF", "x.d", "-pthread", "-Wa,--gdwarf-5", "-Wl,-O1,--as-needed",
                "-Xlinker", "--gc-sections", "-L", "lib", "-lfoo", "-static", "-flto=auto",
                "-c", "x.c", "-o", "x.o"])
    assert b.stage is Stage.OBJECT and b.output == Path("x.o")
    assert b.cflags == ["-g", "-O3", "-Wall", "-std=gnu11", "-D", "X=1", "-I", "inc",
                        "-include", "c.h", "-MD", "-MF", "x.d", "-pthread"]
    assert b.as_flags == ["--gdwarf-5"]
    assert b.ld_flags == ["-O1", "--as-needed", "--gc-sections"]
    assert b.lib_dirs == [Path("lib")]
    assert b.inputs == [Library("foo"), Source(Path("x.c"), Lang.C)]


def test_languages_by_suffix_and_by_x() -> None:
    b = _build(["a.c", "b.s", "c.S", "d.o", "e.a", "-x", "c", "f.inc", "-x", "none", "g.s"])
    assert b.inputs == [Source(Path("a.c"), Lang.C), Source(Path("b.s"), Lang.ASM),
                        Source(Path("c.S"), Lang.ASM_CPP), Linked(Path("d.o")),
                        Linked(Path("e.a")), Source(Path("f.inc"), Lang.C),
                        Source(Path("g.s"), Lang.ASM)]
    assert b.output is None and b.stage is Stage.IMAGE


def test_stage_is_the_earliest_asked_for() -> None:
    assert _build(["-c", "-S", "x.c"]).stage is Stage.ASSEMBLY
    assert _build(["-c", "-E", "x.c"]).stage is Stage.PREPROCESS
    assert _build(["-MM", "x.c"]).stage is Stage.PREPROCESS


def test_launcher_only_for_programs_not_named_box() -> None:
    assert _build(["x.c"]).launcher is not None  # a.out
    assert _build(["x.c", "-o", "prog"]).launcher is not None
    assert _build(["x.c", "-o", "prog.box"]).launcher is None
    assert _build(["-c", "x.c"]).launcher is None


@pytest.mark.parametrize(("argv", "why"), [
    (["-shared", "x.c"], "-shared: a sandbox image is static"),
    (["-m32", "x.c"], "-m32: sandbox images are x86-64"),
    (["-fsanitize=address", "x.c"], "-fsanitize=address: sanitizer runtimes"),
    (["-fprofile-generate", "x.c"], "-fprofile-generate: profiling"),
    (["-pg", "x.c"], "-pg: profiling"),
    (["-nostdlib", "x.c"], "-nostdlib: an image always links"),
    (["-T", "my.ld", "x.c"], "-T: the image layout is tmebox's linker script"),
    (["-fopenmp", "x.c"], "-fopenmp: OpenMP"),
    (["-x", "c++", "x.cc"], "-x c++: tmebox cc compiles c, assembler"),
    (["x.cpp"], "x.cpp: tmebox cc compiles C and assembly only"),
    (["libz.so"], "libz.so: a shared library cannot be linked"),
    (["-o"], "-o: missing argument"),
    (["--isolation", "none", "x.c"], "--isolation none: use one of data, code+data"),
    (["-"], "-: standard input needs -x LANG"),
    ([], "no input files"),
    (["-Wfoo-bar-nonsense"], "-Wfoo-bar-nonsense"),  # no source: the compiler judges it
])
def test_refused_with_the_option_named(argv: list[str], why: str) -> None:
    with pytest.raises(driver.UsageError) as e:
        driver.parse(argv)
    assert why in str(e.value)
    assert "\n" not in str(e.value)


def test_information_requests() -> None:
    assert driver.parse(["-dumpmachine"]) == driver.TARGET_TRIPLE + "\n"
    version = driver.parse(["--version"])
    assert isinstance(version, str) and version.startswith("tmebox cc")
    assert "gcc" in version
    assert driver.parse(["-print-prog-name=ld"]) == "ld\n"
    assert str(driver.parse(["-dumpversion"])).strip()[0].isdigit()


def test_response_file(tmp_path: Path) -> None:
    rsp = tmp_path / "args.rsp"
    rsp.write_text("-c 'x y.c' -DQ=\"a b\"\n")
    b = _build([f"@{rsp}"])
    assert b.inputs == [Source(Path("x y.c"), Lang.C)] and b.cflags == ["-D", "Q=a b"]


# ---------------------------------------------------------------------------
# end to end


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_libc) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "twice.c").write_text('#include "twice.h"\nint twice(int x) { return 2 * x; }\n')
    (tmp_path / "twice.h").write_text("int twice(int x);\n")
    (tmp_path / "main.c").write_text(
        '#include <stdio.h>\n#include "twice.h"\n'
        'int main(int argc, char **argv) {\n'
        '    FILE *f = fopen("out.txt", "w");\n'
        '    if (!f) return 9;\n'
        '    fprintf(f, "%d %s %s\\n", twice(VAL), argv[0], argc > 1 ? argv[1] : "-");\n'
        '    return fclose(f) ? 8 : argc;\n}\n')
    return tmp_path


def test_objects_archive_and_program_like_make_does(project: Path) -> None:
    assert cli.main(["cc", "-c", "-MD", "-O2", "twice.c"]) == 0
    assert (project / "twice.d").read_text().split() == ["twice.o:", "twice.c", "twice.h"]
    subprocess.run(["ar", "rcs", "libtwice.a", "twice.o"], check=True)
    assert cli.main(["cc", "-DVAL=21", "-Wall", "main.c", "-L.", "-ltwice"]) == 0
    prog = project / "a.out"
    assert prog.read_bytes().startswith(b"#!") and Image.load(prog).exports["main"]
    # the #! line runs it as a program: argv[0] as given, the working directory writable
    res = subprocess.run(["./a.out", "--timeout"], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert (project / "out.txt").read_text() == "42 ./a.out --timeout\n"


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("args", [["-c", "twice.c"], ["main.c", "twice.c", "-DVAL=1"]],
                         ids=["object", "image"])
def test_an_output_that_is_not_a_regular_file_is_written_into_not_replaced(
        project: Path, args: list[str]) -> None:
    # configure and Makefiles probe with `-o /dev/null`; a rename over it replaced the
    # device with a file every later writer of /dev/null appended to (a FIFO stands in)
    fifo = project / "sink"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # no end of file before tmebox cc's
    os.set_blocking(rfd, True)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(_read_all(rfd)))
    reader.start()
    try:
        assert cli.main(["cc", *args, "-o", str(fifo)]) == 0
    finally:
        os.close(wfd)
        reader.join()
        os.close(rfd)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert got[0].startswith(b"#!" if "main.c" in args else b"\x7fELF")
    assert not [p.name for p in project.iterdir() if p.name.startswith(".")]


def test_s_gives_assembly_that_c_then_instruments(project: Path) -> None:
    assert cli.main(["cc", "-S", "twice.c"]) == 0
    text = (project / "twice.s").read_text()
    assert "twice:" in text and "%gs" not in text  # before the rewriter
    assert cli.main(["cc", "-c", "twice.s", "-o", "t.o"]) == 0
    dis = subprocess.run(["objdump", "-d", "t.o"], capture_output=True, text=True).stdout
    assert "twice" in dis


def test_e_preprocesses_with_the_sandbox_headers(project: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    (project / "p.c").write_text("#include <stdio.h>\n#ifdef __GLIBC__\nglibc\n#endif\n"
                                 "int v = BUFSIZ;\n")
    assert cli.main(["cc", "-E", "-P", "p.c"]) == 0
    out = "".join(capfd.readouterr().out.split())
    assert "intv=1024;" in out and "glibc" not in out  # musl's stdio.h


def test_mixed_isolation_objects_are_refused_at_the_latest_by_the_verifier(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cc", "--isolation", "data", "-c", "twice.c"]) == 0
    assert cli.main(["cc", "-DVAL=1", "main.c", "twice.o", "-o", "m.box"]) == 1
    assert not (project / "m.box").exists()
    assert "m.box" in capsys.readouterr().err


def test_alignments_beyond_a_bundle_build_in_code_data(project: Path) -> None:
    # zstd's build: gas fills `.p2align 6` with 11-byte nops from wherever it starts,
    # across bundle ends, and the verifier refused the image
    (project / "loops.c").write_text(
        "long f(long *p, long n) { long s = 0; for (long i = 0; i < n; i++) s += p[i] * i;"
        " return s; }\nint main(void) { long a[9] = {1}; return (int)f(a, 9); }\n")
    assert cli.main(["cc", "-O2", "-falign-functions=64", "-falign-loops=64", "loops.c",
                     "-o", "loops.box"]) == 0
    assert Image.load(project / "loops.box").exports["f"]
