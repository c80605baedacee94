"""Verifier throughput (MiB of machine code per second) on real instrumented code.

The input is the .text of every member of the sandbox libc (musl rewritten by tmebox for the
chosen isolation mode), laid out as one code blob the way the linker would (each section
bundle-aligned), or the code of a given image. Measured, interleaved, median of --rounds:

- verify (cold): `verify_code` with an empty per-instruction decision cache (a new image);
- verify (warm): the same with the cache filled (another image from the same compiler);
- capstone detail: capstone's Python `disasm()` with operand detail, decoding only — the
  baseline a straightforward verifier starts from.

Both wall-clock and process CPU time are recorded: on a shared machine the CPU time is the
verifier's own cost, the wall time what a caller waited.

Usage: bench/verifier_speed.py [--mode code+data|data] [--image IMAGE] [--rounds N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import capstone
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from tmebox.trusted import abi, verifier
from tmebox.trusted.image import Image

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


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_verify(code: bytes, mode: str, cold: bool) -> tuple[float, float]:
    if cold:
        verifier._KINDS[mode].clear()
    verdicts = []
    times = timed(lambda: verdicts.append(verifier.verify_code(
        code, code_offset=abi.RT_PAGE_SIZE, image_size=abi.RT_PAGE_SIZE + len(code) + (1 << 20),
        isolation=mode)))
    if not verdicts[0].ok:
        print(f"note: {verdicts[0].summary()}", file=sys.stderr)
    return times


def run_capstone_detail(code: bytes) -> tuple[float, float]:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True

    def decode() -> None:
        for insn in cs.disasm(code, abi.RT_PAGE_SIZE):
            insn.operands  # noqa: B018 - the detail a verifier would read

    return timed(decode)


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
    runs: dict[str, list[tuple[float, float]]] = {
        "verify (cold)": [], "verify (warm)": [], "capstone detail": []}
    for _ in range(args.rounds):
        runs["verify (cold)"].append(run_verify(code, mode, cold=True))
        runs["verify (warm)"].append(run_verify(code, mode, cold=False))
        runs["capstone detail"].append(run_capstone_detail(code))
    wall = {k: statistics.median(t[0] for t in v) for k, v in runs.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in runs.items()}
    mib = len(code) / MIB
    print(f"{source}: {mib:.2f} MiB of code, {args.rounds} interleaved rounds, medians")
    print(f"{'':18}{'wall s':>8}{'MiB/s':>8}{'CPU s':>8}{'MiB/CPU-s':>11}"
          f"{'vs capstone detail (CPU)':>26}")
    for name in runs:
        print(f"{name:18}{wall[name]:8.3f}{mib / wall[name]:8.2f}{cpu[name]:8.3f}"
              f"{mib / cpu[name]:11.2f}{cpu['capstone detail'] / cpu[name]:25.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "source": source, "mode": mode, "code_bytes": len(code), "rounds": args.rounds,
            "runs_wall_cpu": runs, "mib_per_s_wall": {k: mib / t for k, t in wall.items()},
            "mib_per_cpu_s": {k: mib / t for k, t in cpu.items()},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
