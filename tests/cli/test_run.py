"""`tmebox run IMAGE|FILE.c args...`"""

from __future__ import annotations

from pathlib import Path

import pytest

from tmebox import cli

PROG = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    char buf[64];
    printf("%s %d:%s\n", argv[0], argc, argc > 1 ? argv[1] : "");
    if (argc > 2 && argv[2][0] == 'f') { volatile int *p = 0; *p = 1; }
    if (argc > 2 && argv[2][0] == 'l') for (;;) {}
    if (fgets(buf, sizeof buf, stdin)) printf("in:%s", buf);
    return argc + 10;
}
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    src = d / "prog.c"
    src.write_text(PROG)
    return src


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TMEBOX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_run_a_c_file_compiles_once_and_runs_main(source, capfd, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert cli.main(["run", str(source), "hi"]) == 12
    assert capfd.readouterr().out == "prog 2:hi\n"
    cached = list((source.parent.parent / "cache" / "run").glob("prog-*.box"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert cli.main(["run", str(source), "again"]) == 12
    assert cached[0].stat().st_mtime_ns == mtime  # not rebuilt


def test_run_an_image_with_stdin(source, tmp_path, capfd):
    from tmebox.toolchain import cc

    box = tmp_path / "prog.box"
    cc.build(sources=[source], output=box, isolation="code+data")
    r, w = __import__("os").pipe()
    import os

    os.write(w, b"line\n")
    os.close(w)
    saved = os.dup(0)
    os.dup2(r, 0)
    try:
        assert cli.main(["run", str(box)]) == 11
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)
    assert capfd.readouterr().out == "prog.box 1:\nin:line\n"


def test_run_reports_a_fault_in_one_line(source, capfd):
    assert cli.main(["run", str(source), "x", "fault"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("tmebox run: sandbox fault: segv")


def test_run_timeout(source, capfd):
    assert cli.main(["run", "--timeout", "0.3", str(source), "x", "loop"]) == 1
    assert "ran longer than 0.3 s" in capfd.readouterr().err


def test_run_missing_image(tmp_path, capfd):
    assert cli.main(["run", str(tmp_path / "nope.box")]) == 1
    assert "no such image" in capfd.readouterr().err


def test_run_refuses_a_data_mode_image_unless_the_host_opts_in(source, tmp_path, capfd):
    from tmebox.toolchain import cc

    box = tmp_path / "data.box"
    cc.build(sources=[source], output=box, isolation="data")
    assert cli.main(["run", str(box), "x", "s"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "min_isolation 'code+data'" in err[0]
    assert "--min-isolation data" in err[0]
    assert cli.main(["run", "--min-isolation", "data", str(box), "x", "s"]) == 13
    assert capfd.readouterr().out == "data.box 3:x\n"


def test_run_options_after_the_image_are_tmebox_s(source, capfd):
    # The order docs/runtime.md shows: the timeout applies, it is not passed to the program.
    assert cli.main(["run", str(source), "x", "loop", "--timeout", "0.3"]) == 1
    assert "ran longer than 0.3 s" in capfd.readouterr().err
    assert cli.main(["run", str(source), "--timeout=0.3", "x", "loop"]) == 1
    assert "ran longer than 0.3 s" in capfd.readouterr().err


def test_run_arguments_after_double_dash_are_the_program_s(source, capfd, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert cli.main(["run", str(source), "--", "--timeout", "1"]) == 13
    assert capfd.readouterr().out == "prog 3:--timeout\n"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_run_rejects_a_timeout_that_is_not_a_positive_number(source, capfd, value):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--timeout", value, str(source)])
    assert e.value.code == 2
    err = capfd.readouterr().err
    assert "--timeout" in err and "Traceback" not in err


HEAVY = ("numpy", "unicorn", "capstone", "iced_x86", "matplotlib", "cryptography")
# What start-up does without (issue 14): the compiler and the verifier's scan, and the
# modules whose import alone cost milliseconds (argparse with gettext and shutil,
# dataclasses with inspect, typing, signal's enums, secrets).
UNUSED = (*HEAVY, "tmebox.toolchain.cc", "tmebox.trusted.scan", "argparse", "dataclasses",
          "inspect", "typing", "signal", "secrets")

LIGHT = r"""
import sys
from tmebox import cli
status = cli.main([sys.argv[1], sys.argv[2], "x"])
print(status, sorted(m for m in sys.argv[3:] if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["run", "exec"])
def test_running_a_known_image_loads_nothing_heavy(source, tmp_path, command):
    """The first run verifies (and loads the decoders); later runs take the kept verdict."""
    import os
    import subprocess
    import sys

    from tmebox.toolchain import cc

    box = tmp_path / "light.box"
    cc.build(sources=[source], output=box, isolation="code+data")
    env = {**os.environ, "TMEBOX_CACHE": str(tmp_path / "cache")}
    outs = [subprocess.run([sys.executable, "-c", LIGHT, command, str(box), *UNUSED], env=env,
                           text=True, capture_output=True, input="", timeout=120)
            for _ in range(2)]
    first, second = (o.stdout.splitlines()[-1] for o in outs)
    assert first.startswith("12 [") and "tmebox.trusted.scan" in first, outs[0].stderr
    assert second == "12 []", outs[1].stderr


def test_import_tmebox_loads_no_backend_decoder_or_plotting():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, tmebox; print(sorted(m for m in "
                          f"{HEAVY + ('tmebox.runtime',)!r} if m in sys.modules))"],
                         text=True, capture_output=True, timeout=60)
    assert out.stdout == "[]\n", out.stderr
