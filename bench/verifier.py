"""Verifier throughput (MiB of machine code per second) on real instrumented code.

The input is the .text of every member of the sandbox libc (musl rewritten by tmebox for the
chosen isolation mode), laid out as one code blob the way the linker would (each section
bundle-aligned), or the code of a given image. Measured, interleaved, median of --rounds:

- verify (cold): `verify_code` with an empty per-instruction decision cache (a new image);
- verify (warm): the same with the cache filled (another image from the same compiler);
- capstone detail: capstone's Python `disasm()` with operand detail, decoding only — the
  baseline a straightforward verifier starts from.

Usage: bench/verifier.py [--mode code+data|data] [--image IMAGE] [--rounds N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import capstone
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from tmebox.toolchain import abi, verifier
from tmebox.toolchain.image import Image

MIB = 1 << 20


def libc_code(mode: str) -> bytes:
    from tmebox.toolchain import libc

    archive = libc.ensure_libc(mode) / "lib" / "libc.a"
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["ar", "x", str(archive)], cwd=tmp, check=True)
        for member in sorted(Path(tmp).iterdir()):
            with member.open("rb") as f:
                for section in ELFFile(f).iter_sections():
                    if section["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and section["sh_size"]:
                        code = section.data()
                        parts.append(code + b"\xcc" * (-len(code) % abi.BUNDLE_SIZE))
    return b"".join(parts)


def run_verify(code: bytes, mode: str, cold: bool) -> float:
    if cold:
        verifier._KINDS[mode].clear()
    t = time.perf_counter()
    verdict = verifier.verify_code(code, code_offset=abi.RT_PAGE_SIZE,
                                   image_size=abi.RT_PAGE_SIZE + len(code) + (1 << 20),
                                   isolation=mode)
    elapsed = time.perf_counter() - t
    if not verdict.ok:
        # Unlinked objects leave branches to the section end; everything else must pass.
        print(f"note: {verdict.summary()}", file=sys.stderr)
    return elapsed


def run_capstone_detail(code: bytes) -> float:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    t = time.perf_counter()
    for insn in cs.disasm(code, abi.RT_PAGE_SIZE):
        insn.operands  # noqa: B018 - the detail a verifier would read
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default=abi.DEFAULT_ISOLATION, choices=abi.ISOLATION_MODES)
    p.add_argument("--image", help="verify this image's code instead of the sandbox libc")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.image:
        image = Image.load(args.image)
        code, mode = image.code.data[image.rt_range[1]:], image.isolation
        source = args.image
    else:
        code, mode, source = libc_code(args.mode), args.mode, f"sandbox libc ({args.mode})"
    times: dict[str, list[float]] = {"verify (cold)": [], "verify (warm)": [],
                                     "capstone detail": []}
    for _ in range(args.rounds):
        times["verify (cold)"].append(run_verify(code, mode, cold=True))
        times["verify (warm)"].append(run_verify(code, mode, cold=False))
        times["capstone detail"].append(run_capstone_detail(code))
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["capstone detail"]
    print(f"{source}: {len(code) / MIB:.2f} MiB of code, {args.rounds} interleaved rounds")
    print(f"{'':18}{'median s':>10}{'MiB/s':>8}{'vs capstone detail':>20}")
    for name, t in medians.items():
        print(f"{name:18}{t:10.3f}{len(code) / MIB / t:8.2f}{base / t:19.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "source": source, "mode": mode, "code_bytes": len(code), "rounds": args.rounds,
            "times": times, "mib_per_s": {k: len(code) / MIB / t for k, t in medians.items()},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
