"""`tmebox` command line: every subcommand turns tmebox errors into one line and exit 1."""

from __future__ import annotations

import os
import sys

from tmebox.errors import CompileError, TmeboxError
from tmebox.trusted import abi

# argparse (with gettext, shutil, locale) is imported only when a command line needs it: a
# plain `tmebox run IMAGE ARGS` or `tmebox exec` is parsed by hand (see main()).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from types import SimpleNamespace
    from typing import Any, NoReturn


def _cmd_setup(args: argparse.Namespace) -> int:
    from tmebox.toolchain import libc

    for mode in libc.MODES:
        path = libc.ensure_libc(mode, progress=True)
        print(f"sandbox libc ({mode}): {path}")
    return 0


def _cmd_cc(argv: list[str]) -> int:
    from tmebox.toolchain import driver

    return driver.main(argv)


def _cmd_exec(argv: list[str]) -> int:
    from pathlib import Path

    from tmebox import programs

    if not argv:
        raise TmeboxError("give an image (and the program's arguments)")
    return programs.exec_command(Path(argv[0]), argv)


def _cmd_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tmebox.trusted import verifier

    status = 0
    for image in args.images:
        verdict = verifier.verify_file(Path(image))
        print(verdict.summary())
        if not verdict.ok:
            status = 1
    return status


def _seconds(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, "
                                         f"not {text}")
    return value


def _run_defaults() -> dict[str, Any]:
    """`tmebox run`'s options when none is given, by dest (fresh lists each time)."""
    return {"backend": "native", "timeout": None, "min_isolation": abi.DEFAULT_ISOLATION,
            "env": [], "inherit_env": False, "dir": [], "memory_limit": None}


def _run_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    import argparse

    given = _run_defaults()

    def default(dest: str) -> object:
        return given[dest] if defaults else argparse.SUPPRESS  # later: only what is given

    parser.add_argument("--backend", choices=["native", "tme"], default=default("backend"))
    parser.add_argument("--timeout", type=_seconds, default=default("timeout"), metavar="S",
                        help="stop the program after S seconds (runtime calls included)")
    parser.add_argument("--min-isolation", choices=abi.ISOLATION_MODES,
                        default=default("min_isolation"),
                        help="weakest isolation mode accepted (data: only for trusted code)")
    parser.add_argument("--env", action="append", type=_env_pair, default=default("env"),
                        metavar="K=V", help="set K in the program's environment (repeatable); "
                        "nothing of tmebox's own environment is passed unless asked")
    parser.add_argument("--inherit-env", action="store_true", default=default("inherit_env"),
                        help="pass tmebox's whole environment to the program (--env wins)")
    parser.add_argument("--dir", action="append", type=_dir_spec, default=default("dir"),
                        metavar="HOST:GUEST[:ro|rw]", help="give the program the host "
                        "directory HOST as GUEST (read-only unless :rw; repeatable); it can "
                        "open no other file")
    parser.add_argument("--memory-limit", type=_size, default=default("memory_limit"),
                        metavar="BYTES",
                        help="heap and mmap the program may map (K, M, G suffixes)")


def _dir_spec(text: str) -> tuple[str, tuple[str, str]]:
    import argparse

    host, _, rest = text.partition(":")
    guest, _, mode = rest.partition(":")
    if not host or not guest.startswith("/") or mode not in ("", "ro", "rw") or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be HOST:GUEST[:ro|rw] with an absolute GUEST "
                                         f"path, not {text!r}")
    return guest, (host, mode or "ro")


def _size(text: str) -> int:
    import argparse

    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    digits, unit = text.rstrip("KMGkmg"), text[len(text.rstrip("KMGkmg")):].upper()
    if not digits.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"must be a number of bytes (K, M or G suffix), "
                                         f"not {text!r}")
    return int(digits) * units[unit]


def _env_pair(text: str) -> tuple[str, str]:
    import argparse

    key, eq, value = text.partition("=")
    if not key or not eq or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be K=V with a non-empty K, not {text!r}")
    return key, value


def _split_run_args(args: argparse.Namespace) -> None:
    """tmebox's options may also follow the image (`tmebox run x.box --timeout 1`); what is
    not one of them, and everything after `--`, is the program's."""
    later = _new_parser(prog="tmebox run", allow_abbrev=False, add_help=False)
    _run_options(later, defaults=False)
    found, guest = later.parse_known_args(args.args)
    for name, value in vars(found).items():
        # --env and --dir given before and after the image: all count
        setattr(args, name, getattr(args, name) + value if name in ("env", "dir") else value)
    args.args = guest + args.program_args


def _cmd_run(args: argparse.Namespace) -> int:
    _split_run_args(args)
    return _run(args)


def _run(args: argparse.Namespace | SimpleNamespace) -> int:
    """`tmebox run` once its command line is parsed (by argparse or by _plain_run)."""
    from pathlib import Path

    from tmebox import programs

    return programs.run_command(
        target=Path(args.image),
        argv=args.args,
        backend=args.backend,
        timeout=args.timeout,
        min_isolation=args.min_isolation,
        env={**(os.environ if args.inherit_env else {}), **dict(args.env)},
        dirs=dict(args.dir),
        memory_limit=args.memory_limit,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from tmebox import demo

    return demo.run_demo(tenants=args.tenants, requests=args.requests, backend=args.backend,
                         integrity=args.integrity)


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tmebox import bench

    out = bench.run(bench.Options(
        out=Path(args.out) if args.out else None,
        quick=args.quick,
        workloads=args.workload or None,
        rounds=args.rounds,
        sections=args.only or None,
        programs=args.program or None,
        rebuild=args.rebuild,
    ))
    print(f"results: {out}")
    return 0


def _new_parser(**options: Any) -> argparse.ArgumentParser:
    """An argparse parser whose bad usage is one line naming the command and the problem,
    not the usage text (a class made here, where argparse is first needed)."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.exit(2, f"{self.prog}: {message} (--help lists the options)\n")

    return _Parser(**options)


def _setup_parser(s: argparse.ArgumentParser) -> None:
    s.set_defaults(func=_cmd_setup)


def _verify_parser(s: argparse.ArgumentParser) -> None:
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.set_defaults(func=_cmd_verify)


def _run_parser(s: argparse.ArgumentParser) -> None:
    import argparse

    _run_options(s)
    s.add_argument("image", metavar="IMAGE|FILE.c")
    s.add_argument("args", nargs=argparse.REMAINDER, metavar="ARG")
    s.set_defaults(func=_cmd_run)


def _demo_parser(s: argparse.ArgumentParser) -> None:
    s.add_argument("--tenants", type=int, default=1000)
    s.add_argument("--requests", type=int, default=10000)
    s.add_argument("--backend", choices=["native", "tme"], default="native")
    s.add_argument("--integrity", action="store_true",
                   help="tme backend: TME-MK integrity (foreign reads and tampering raise "
                        "machine checks)")
    s.set_defaults(func=_cmd_demo)


def _bench_parser(s: argparse.ArgumentParser) -> None:
    s.add_argument("--quick", action="store_true", help="smoke run: kernels only, tiny sizes")
    s.add_argument("-o", "--out", metavar="DIR", help="results folder (default ./results/<time>)")
    s.add_argument("--rounds", type=int, metavar="N", help="interleaved rounds (default 11)")
    s.add_argument("--workload", action="append", metavar="NAME", help="only these workloads")
    s.add_argument("--program", action="append", metavar="NAME",
                   help="only these whole programs (section programs)")
    s.add_argument("--only", action="append", metavar="SECTION",
                   choices=["overhead", "programs", "switch", "density", "tme", "toolchain"],
                   help="only these sections (--quick leaves out programs unless named)")
    s.add_argument("--rebuild", action="store_true", help="ignore cached workload builds")
    s.set_defaults(func=_cmd_bench)


# name: (help, what the subcommand's parser holds, its description)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str | None]] = {
    "setup": ("fetch and build the sandbox libc (cached)", _setup_parser, None),
    "verify": ("check that an image obeys its isolation rules", _verify_parser, None),
    "run": ("run a sandbox image's main() (FILE.c is compiled first)", _run_parser,
            "Options may come before or after the image; arguments after `--` all go to the "
            "program."),
    "demo": ("many tenants, one Heartbleed-style bug, no leak", _demo_parser, None),
    "bench": ("evaluation: overhead, whole programs, switch cost, density, tme, toolchain",
              _bench_parser, None),
}


# Commands whose command line is not argparse's: gcc's, and a program's own.
_RAW_COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "cc": ("compile C or assembly into a verified sandbox image (gcc's options; "
           "tmebox cc --help)", _cmd_cc),
    "exec": ("run an image as a program, every argument after it its own (what the #! line "
             "of a `tmebox cc` program calls)", _cmd_exec),
}


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with `only`, just that subcommand's (building all of
    them costs ~10 ms; a plain `tmebox run` builds none, see _plain_run)."""
    p = _new_parser(prog="tmebox", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=type(p))
    for name, (text, build, description) in _COMMANDS.items():
        if only in (None, name):
            build(sub.add_parser(name, help=text, description=description))
    if only is None:
        for name, (text, _) in _RAW_COMMANDS.items():
            sub.add_parser(name, help=text, add_help=False)
    return p


def _plain_run(argv: list[str]) -> SimpleNamespace | None:
    """`run IMAGE ARG...` with no option before a `--` (the common form, and what a script
    runs): its parse, exactly what argparse gives, without building a parser; None for any
    other command line."""
    if argv[:1] != ["run"] or len(argv) < 2 or argv[1].startswith("-"):
        return None
    rest = argv[2:]
    at = rest.index("--") if "--" in rest else len(rest)
    if any(a.startswith("-") for a in rest[:at]):
        return None
    from types import SimpleNamespace

    return SimpleNamespace(command="run", image=argv[1], args=rest[:at] + rest[at + 1:],
                           **_run_defaults())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in _RAW_COMMANDS:
        command, rest = argv[0], argv[1:]
        return _reporting(command, lambda: _RAW_COMMANDS[command][1](rest))
    plain = _plain_run(argv)
    if plain is not None:
        return _reporting("run", lambda: _run(plain))
    args, extra = _parse(argv)
    if extra and args.command != "run":  # (run's go to the program)
        print(f"tmebox {args.command}: unrecognized option(s) {' '.join(extra)} (--help lists "
              "the options)", file=sys.stderr)
        return 2
    return _reporting(args.command, lambda: args.func(args))


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """argparse's parse of a command line, and the arguments it did not take."""
    # `tmebox run ... -- ARGS`: ARGS are the program's, whatever they look like (split off
    # here: argparse would drop the `--` and then take them for tmebox's own options).
    program_args: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:
        at = argv.index("--")
        argv, program_args = argv[:at], argv[at + 1:]
    args, extra = _parser(argv[0] if argv and argv[0] in _COMMANDS else None
                          ).parse_known_args(argv)
    args.program_args = program_args
    return args, extra


def _reporting(command: str, work: Callable[[], int]) -> int:
    """work's exit status; a tmebox error is one line on stderr and status 1."""
    try:
        return work()
    except CompileError as e:
        if e.output:  # the compiler's own messages, once, then what failed
            print(e.output, file=sys.stderr)
            print(f"tmebox {command}: {e.what} failed", file=sys.stderr)
        else:
            print(f"tmebox {command}: {e}", file=sys.stderr)
        return 1
    except TmeboxError as e:
        print(f"tmebox {command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tmebox {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
