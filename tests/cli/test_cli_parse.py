"""The hand-written parse of plain `tmebox run IMAGE ARGS` (cli._plain_run) is argparse's."""

from __future__ import annotations

import pytest

from tmebox import cli

PLAIN = [
    ["run", "x.box"],
    ["run", "x.box", "a", "b"],
    ["run", "prog.c", "run", "x=1", ""],
    ["run", "x.box", "--", "--timeout", "1"],
    ["run", "x.box", "a", "--", "-b", "--", "c"],
    ["run", "x.box", "--"],
    ["run", "dir with space/x.box", "a b"],
]
# Forms the hand-written parse leaves to argparse (an option, or anything that looks like one).
OTHER = [
    ["run"],
    ["run", "--timeout", "1", "x.box"],
    ["run", "x.box", "--timeout", "1"],
    ["run", "x.box", "a", "--timeout=1", "--", "b"],
    ["run", "x.box", "-5"],
    ["run", "x.box", "-"],
    ["run", "--", "x.box"],
    ["run", "-h"],
    ["verify", "x.box"],
    ["runx", "x.box"],
]


def _argparse(argv: list[str]) -> dict[str, object]:
    args, extra = cli._parse(argv)
    assert not extra
    cli._split_run_args(args)
    got = vars(args)
    assert got.pop("func") is cli._cmd_run
    del got["program_args"]  # (joined to args by _split_run_args)
    return got


@pytest.mark.parametrize("argv", PLAIN)
def test_plain_run_is_argparse_s_parse(argv):
    plain = cli._plain_run(argv)
    assert plain is not None
    assert vars(plain) == _argparse(argv)


@pytest.mark.parametrize("argv", OTHER)
def test_anything_else_goes_to_argparse(argv):
    assert cli._plain_run(argv) is None


def test_plain_parses_do_not_share_their_lists():
    a, b = cli._plain_run(["run", "x.box"]), cli._plain_run(["run", "x.box"])
    assert a is not None and b is not None
    a.env.append(("K", "V"))
    assert b.env == [] and cli._run_defaults()["env"] == []
