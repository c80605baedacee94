"""Speed of the emulated TME-MK platform (docs/tme.md quotes its output).

Cases run interleaved (round-robin, `--rounds` times); each figure is the median over the
rounds. Baselines measured in the same run: one `cryptography` XTS context per 64-byte
line (the naive engine) for throughput, and a bare bytearray slice for single-line ops.

    .venv/bin/python bench/tme_platform.py [--rounds 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from rich.console import Console
from rich.table import Table

from tmebox.tme import Platform, XtsCipher

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    units = fn()
    return time.perf_counter() - t0, units


def throughput_cases(size: int) -> dict[str, Callable[[], int]]:
    """Bytes per second of line encryption/decryption; each callable returns bytes done."""
    key, tweak = os.urandom(16), os.urandom(16)
    data = os.urandom(size)
    seqs = [64 * i for i in range(size // 64)]
    xts = XtsCipher(key, tweak)
    xts256 = XtsCipher(os.urandom(32), os.urandom(32))
    ct = xts.encrypt_units(data, seqs)
    naive_lines = data[:64 * 2048]  # the naive engine is slow: time fewer lines

    def naive() -> int:
        for i in range(0, len(naive_lines), 64):
            enc = Cipher(algorithms.AES(key + tweak),
                         modes.XTS((i).to_bytes(16, "little"))).encryptor()
            enc.update(naive_lines[i:i + 64])
        return len(naive_lines)

    def batch_line_loop() -> int:  # single-line path of the engine, for comparison
        for i in range(0, len(naive_lines), 64):
            xts.encrypt_line(naive_lines[i:i + 64], i)
        return len(naive_lines)

    plat = Platform(memory_size=max(size, 4 * MIB), cache=True)
    plat_i = Platform(memory_size=max(size, 4 * MIB), cache=True, integrity=True)
    assert plat.pconfig(1, "set_key_random") == 0
    assert plat_i.pconfig(1, "set_key_random") == 0
    plat.write_lines(0, data, 1)
    plat_i.write_lines(0, data, 1)
    pages = size // 4096

    def page_writes(p: Platform) -> Callable[[], int]:
        def run() -> int:
            for i in range(pages):
                p.write_lines(i * 4096, data[i * 4096:(i + 1) * 4096], 1)
            return size
        return run

    def page_reads(p: Platform) -> Callable[[], int]:
        def run() -> int:
            for i in range(pages):
                p.read_lines(i * 4096, 64, 1)
            return size
        return run

    return {
        "baseline: cryptography XTS, one context per line (encrypt)": naive,
        "engine single-line path (encrypt_line)": batch_line_loop,
        f"engine batch encrypt, {size // MIB} MiB per call (AES-XTS-128)":
            lambda: len(xts.encrypt_units(data, seqs)),
        f"engine batch decrypt, {size // MIB} MiB per call (AES-XTS-128)":
            lambda: len(xts.decrypt_units(ct, seqs)),
        f"engine batch encrypt, {size // MIB} MiB per call (AES-XTS-256)":
            lambda: len(xts256.encrypt_units(data, seqs)),
        f"platform write_lines, {size // MIB} MiB per call": lambda: (
            plat.write_lines(0, data, 1), size)[1],
        f"platform read_lines, {size // MIB} MiB per call": lambda: len(
            plat.read_lines(0, size // 64, 1)),
        "platform write_lines, one 4 KiB page per call": page_writes(plat),
        "platform read_lines, one 4 KiB page per call": page_reads(plat),
        "platform write_lines, 4 KiB pages, integrity on": page_writes(plat_i),
        "platform read_lines, 4 KiB pages, integrity on": page_reads(plat_i),
    }


def ops_cases(nops: int, rounds: int) -> dict[str, Callable[[], int]]:
    """Random single-line reads/writes (8 bytes at a random offset inside a line)."""
    rnd = random.Random(1)
    memory, hot_set = 64 * MIB, 4 * MIB  # the default cache is 8 MiB

    def offsets(span: int) -> list[int]:
        return [rnd.randrange(0, span // 64) * 64 + rnd.randrange(0, 56) for _ in range(nops)]

    hot = Platform(memory_size=memory)
    cold_r, cold_w = Platform(memory_size=memory), Platform(memory_size=memory)
    flat = Platform(memory_size=memory, cache=False)
    for p in (hot, cold_r, cold_w, flat):
        assert p.pconfig(1, "set_key_random") == 0
    hot_offsets = offsets(hot_set)
    # Cold cases get fresh offsets every round, and start with a full cache (dirty for the
    # writes), so that they measure the steady state: misses, evictions, write-backs.
    cold = iter([offsets(memory) for _ in range(2 * rounds + 2)])
    word = b"12345678"
    for o in hot_offsets:
        hot.read(o, 8, 1)
    for o in next(cold) + offsets(memory):
        cold_r.read(o, 8, 1)
        cold_w.write(o, word, 1)
    ram = bytearray(memory)

    def reads(p: Platform, fixed: list[int] | None) -> Callable[[], int]:
        def run() -> int:
            read = p.read
            for o in fixed if fixed is not None else next(cold):
                read(o, 8, 1)
            return nops
        return run

    def writes(p: Platform, fixed: list[int] | None) -> Callable[[], int]:
        def run() -> int:
            write = p.write
            for o in fixed if fixed is not None else next(cold):
                write(o, word, 1)
            return nops
        return run

    def baseline() -> int:
        for o in hot_offsets:
            ram[o:o + 8] = word
            bytes(ram[o:o + 8])
        return 2 * nops

    flat_offsets = offsets(memory)
    return {
        "baseline: bytearray slice read+write (per op)": baseline,
        "read 8 B, working set 4 MiB in 8 MiB cache (hits)": reads(hot, hot_offsets),
        "write 8 B, working set 4 MiB in 8 MiB cache (hits)": writes(hot, hot_offsets),
        "read 8 B, working set 64 MiB (7/8 misses)": reads(cold_r, None),
        "write 8 B, working set 64 MiB (7/8 misses, dirty evictions)": writes(cold_w, None),
        "read 8 B, cache=False (decrypt every access)": reads(flat, flat_offsets),
        "write 8 B, cache=False (read-modify-write every access)": writes(flat, flat_offsets),
    }


def run_interleaved(cases: dict[str, Callable[[], int]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            seconds, units = _timed(fn)
            samples[name].append(units / seconds)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "tme_platform.json")
    args = ap.parse_args()
    size = MIB if args.quick else 16 * MIB
    nops = 20_000 if args.quick else 200_000

    tput = run_interleaved(throughput_cases(size), args.rounds)
    ops = run_interleaved(ops_cases(nops, args.rounds), args.rounds)

    console = Console()
    base = next(v for k, v in tput.items() if k.startswith("baseline"))
    t = Table(title=f"Line encryption throughput (median of {args.rounds} interleaved rounds)")
    t.add_column("case")
    t.add_column("MB/s", justify="right")
    t.add_column("x naive", justify="right")
    for name, bps in tput.items():
        t.add_row(name, f"{bps / 1e6:,.0f}", f"{bps / base:.1f}")
    console.print(t)
    base_ops = next(v for k, v in ops.items() if k.startswith("baseline"))
    t = Table(title=f"Random single-line accesses (median of {args.rounds} interleaved rounds)")
    t.add_column("case")
    t.add_column("K ops/s", justify="right")
    t.add_column("x bytearray", justify="right")
    for name, rate in ops.items():
        t.add_row(name, f"{rate / 1e3:,.0f}", f"{rate / base_ops:.2f}")
    console.print(t)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "tme_platform",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"python": sys.version.split()[0], "machine": host.machine(),
                 "cpus": os.cpu_count()},
        "rounds": args.rounds,
        "bulk_bytes": size,
        "ops_per_round": nops,
        "throughput_bytes_per_second": tput,
        "ops_per_second": ops,
    }, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
