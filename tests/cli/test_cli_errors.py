"""Bad input to the CLI: one line naming the problem, a non-zero exit, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmebox import cli


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TMEBOX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err and "Traceback" not in err, err
    return err


def test_a_misspelt_main_is_an_error_not_status_0(tmp_path, capsys):
    (tmp_path / "typo.c").write_text("int mian(void) { return 3; }\n")
    assert cli.main(["run", str(tmp_path / "typo.c")]) == 1
    assert "typo.c: no main() to run" in one_line(capsys)


def test_cc_refuses_a_missing_output_directory(tmp_path, capsys):
    (tmp_path / "a.c").write_text("int main(void) { return 0; }\n")
    out = tmp_path / "no" / "such" / "a.box"
    assert cli.main(["cc", str(tmp_path / "a.c"), "-o", str(out)]) == 1
    assert "does not exist" in one_line(capsys)
    assert not (tmp_path / "no").exists()


def test_cc_names_a_directory_given_as_input(tmp_path, capsys):
    assert cli.main(["cc", str(tmp_path)]) == 1
    assert f"{tmp_path}: is a directory" in one_line(capsys)


@pytest.mark.parametrize("argv,want", [
    (["verify", "--nope", "x.box"], "tmebox verify: unrecognized option(s) --nope"),
    (["run", "--timeout", "0", "x.box"], "tmebox run: argument --timeout"),
    (["run", "x.box", "--timeout", "-1"], "tmebox run: argument --timeout"),
    (["run", "--dir", "nocolon", "x.box"], "tmebox run: argument --dir"),
])
def test_bad_options_are_one_line(argv, want, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's own errors exit
        status = e.code
    assert status == 2
    assert want in one_line(capsys)


def test_cc_unknown_options_are_the_compilers_to_refuse(tmp_path, capsys, sandbox_libc):
    (tmp_path / "a.c").write_text("int f(void) { return 0; }\n")
    assert cli.main(["cc", "--bogus", "-c", str(tmp_path / "a.c"), "-o",
                     str(tmp_path / "a.o")]) == 1
    err = capsys.readouterr().err  # the compiler's one line, then what failed
    assert err.count("--bogus") == 1 and "usage:" not in err, err
    assert not (tmp_path / "a.o").exists()


def test_libraries_with_c_are_a_warning(tmp_path, capsys, sandbox_libc):
    (tmp_path / "a.c").write_text("int f(void) { return 0; }\n")
    assert cli.main(["cc", "-c", "-lz", str(tmp_path / "a.c"), "-o",
                     str(tmp_path / "a.o")]) == 0
    assert "-lz: linker input unused because linking not done" in capsys.readouterr().err
    assert Path(tmp_path / "a.o").exists()


def test_the_compilers_error_is_shown_once(tmp_path, capsys, sandbox_libc):
    (tmp_path / "bad.c").write_text("int main(void) { return x; }\n")
    assert cli.main(["cc", str(tmp_path / "bad.c"), "-o", str(tmp_path / "bad.box")]) == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 1, err
    assert err.rstrip().endswith("bad.c failed") and "tmebox cc: compiling " in err, err


def test_help_lists_every_subcommand_and_each_parses_alone(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = capsys.readouterr().out
    for name in cli._COMMANDS:
        assert name in listed
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0 and f"usage: tmebox {name}" in capsys.readouterr().out
