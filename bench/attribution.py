"""Where code+data's overhead goes: one workload built with parts of the instrumentation
taken out, each variant's sandbox libc built the same way, run interleaved.

UNSAFE BY DESIGN: the variants drop checks the verifier requires, so this script switches
the verifier off for its own builds and loads. Their images and libcs are cached under
their own keys (the variant's name is appended), never where `tmebox cc` looks.

Variants (cumulative names say what is taken out of the current code+data build):
- `current`: the product as it is;
- `plainret`: `ret` returns without masking its address (no pop/and/or/push);
- `nomask`: also indirect calls and jumps through %r11 without the and/or mask;
- `nobundles`: no `.bundle_align_mode`, no locked groups, calls still padded to end at a
  32-byte boundary (from a 32-byte aligned label), masks and returns as in `current`.

    .venv/bin/python bench/attribution.py --workload lua --rounds 21
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

from tmebox.bench import build, workloads
from tmebox.bench.overhead import interleaved_cpu, ratio_quartiles
from tmebox.toolchain import libc, link, rewriter
from tmebox.trusted import abi, verifier

Rw = rewriter._Rewriter
Patch = tuple[object, str, object]


def _plain_ret(self: Rw, insn: object) -> list[str]:
    return ["\tret"]


def _unmasked(self: Rw, kind: str) -> list[str]:
    if kind == "call":
        return self.call_group(["\tcall\t*%r11"], 3)  # call *%r11 is 3 bytes
    return [f"\t{kind}\t*%r11"]


def _call_padding_only(self: Rw, body: list[str], length: int) -> list[str]:
    anchor = self.anchors.get(self.section)
    if anchor is None:  # the fixed form: a whole aligned bundle ending with the call
        return ["\t.p2align\t5", *rewriter._nop_fill(abi.BUNDLE_SIZE - length), *body]
    return [f"\t.space\t(-(. - {anchor} + {length})) & {abi.BUNDLE_SIZE - 1}, 0x90", *body]


_RET: list[Patch] = [(Rw, "ret", _plain_ret)]
_MASK: list[Patch] = [(Rw, "masked_branch", _unmasked)]
_BUNDLES: list[Patch] = [(Rw, "group", lambda self, lines: lines),
                         (Rw, "call_group", _call_padding_only),
                         (rewriter, "_BUNDLE_SHIFT", 0)]
VARIANTS: dict[str, list[Patch]] = {
    "current": [],
    "plainret": _RET,
    "plainret+nomask": _RET + _MASK,
    "nobundles": _BUNDLES,
}


@contextlib.contextmanager
def _patched(pairs: list[Patch]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for owner, name, value in pairs:
            stack.enter_context(mock.patch.object(owner, name, value))
        yield


def _unverified() -> list[Patch]:
    def ok(*args: object, **kw: object) -> verifier.Verdict:
        return verifier.Verdict("unverified", True, "code+data", 0, 0)

    return [(verifier, "verify_file", ok), (verifier, "verify_image", ok),
            (link, "verify", lambda path, shown_as: None)]


def _own_libc(name: str) -> list[Patch]:
    real: Callable[[str], str] = libc.build_key

    def key(mode: str = "data") -> str:
        k = real(mode)
        return k if mode == libc.NATIVE or name == "current" else f"{k}-{name}"

    return [(libc, "build_key", key)]


def builds(name: str, variants: list[str], keep: Path) -> dict[str, Path]:
    w = workloads.WORKLOADS[name]
    paths: dict[str, Path] = {}
    for v in variants:
        with _patched(VARIANTS[v] + _own_libc(v)):
            built = build.build(w, rebuild=True)
        if "baseline" not in paths:
            paths["baseline"] = keep / "baseline"
            shutil.copy(built.paths["baseline"], paths["baseline"])
        paths[v] = keep / f"{v}.box"
        shutil.copy(built.paths["code+data"], paths[v])
        print(f"  built {v}", flush=True)
    build.build(w, rebuild=True)  # leave the cache as the current toolchain makes it
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", default="lua", choices=sorted(workloads.WORKLOADS))
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                    help="repeatable; default: all")
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    variants = args.variant or list(VARIANTS)
    scale = workloads.WORKLOADS[args.workload].scale
    with tempfile.TemporaryDirectory() as tmp, _patched(_unverified()):
        paths = builds(args.workload, variants, Path(tmp))
        cpu = interleaved_cpu(paths, scale, args.rounds)
    print(f"{args.workload}: {args.rounds} rounds, baseline median "
          f"{statistics.median(cpu['baseline']) / 1e6:.1f} ms CPU; load {os.getloadavg()}")
    for v in variants:
        q1, med, q3 = ratio_quartiles(cpu, v)
        print(f"  code+data, {v:16s} {med:+6.1f} %  [{q1:+.1f}, {q3:+.1f}]")


if __name__ == "__main__":
    main()
