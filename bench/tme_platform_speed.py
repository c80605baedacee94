"""Speed of the emulated TME-MK platform (docs/tme.md quotes its output).

Cases run interleaved (round-robin, `--rounds` times); each figure is the median over the
rounds, of wall-clock time and of this process's CPU time (the machine may be shared: the
load average is recorded). Baselines measured in the same run: one `cryptography` XTS
context per 64-byte line (the naive engine) for throughput, and a bare bytearray slice for
single-line ops.

    .venv/bin/python bench/tme_platform_speed.py [--rounds 7] [--quick]
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

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from rich.console import Console
from rich.table import Table

from tmebox.tme import Platform, XtsCipher

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def _timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    w0, c0 = time.perf_counter(), time.process_time()
    units = fn()
    return time.perf_counter() - w0, time.process_time() - c0, units


def throughput_cases(total: int) -> dict[str, Callable[[], int]]:
    """Bytes per second of line encryption/decryption; each callable returns bytes done.

    Every case moves `total` bytes, in calls of the batch size its name gives.
    """
    key, tweak = os.urandom(16), os.urandom(16)
    data = os.urandom(total)
    seqs = np.arange(total // 64, dtype=np.uint64) * np.uint64(64)
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

    def line_loop() -> int:
        for i in range(0, len(naive_lines), 64):
            xts.encrypt_line(naive_lines[i:i + 64], i)
        return len(naive_lines)

    def engine(cipher: XtsCipher, src: bytes, batch: int, encrypt: bool) -> Callable[[], int]:
        fn = cipher.encrypt_units if encrypt else cipher.decrypt_units
        lines = batch // 64

        def run() -> int:
            for a in range(0, total, batch):
                fn(src[a:a + batch], seqs[a // 64:a // 64 + lines])
            return total
        return run

    # Platforms of 4x `total`: page-by-page sweeps over all of it miss the page-mask LRU
    # (16 MiB of pages) every time, sweeps over half of `total` always hit it.
    memory = 4 * total
    plats = {}
    # Separate platforms for sweeps and repeats: a sweep would evict the repeats' masks.
    for role in ("sweep", "repeat", "integrity"):
        p = Platform(memory_size=memory, integrity=role == "integrity")
        assert p.pconfig(1, "set_key_random") == 0
        for a in range(0, memory, total):
            p.write_lines(a, data, 1)
        plats[role] = p
    sweep = {"at": 0}

    def offsets(batch: int, cached: bool) -> list[tuple[int, int]]:
        """(memory offset, data offset) of each call of one run."""
        if cached:
            half = total // 2
            return [(a % half, a) for a in range(0, total, batch)]
        base = sweep["at"]
        sweep["at"] = (base + total) % memory
        return [(base + a, a) for a in range(0, total, batch)]

    def writes(p: Platform, batch: int, cached: bool = True) -> Callable[[], int]:
        def run() -> int:
            for at, a in offsets(batch, cached):
                p.write_lines(at, data[a:a + batch], 1)
            return total
        return run

    def reads(p: Platform, batch: int, cached: bool = True) -> Callable[[], int]:
        def run() -> int:
            for at, _ in offsets(batch, cached):
                p.read_lines(at, batch // 64, 1)
            return total
        return run

    def size(batch: int) -> str:
        return f"{batch // MIB} MiB" if batch >= MIB else f"{batch // 1024} KiB"

    batches = [b for b in (4096, 64 << 10, MIB, 16 * MIB) if b <= total]
    cases: dict[str, Callable[[], int]] = {
        "baseline: cryptography XTS, one context per line": naive,
        "engine, one line per call (encrypt_line)": line_loop,
    }
    for b in batches:
        cases[f"engine encrypt, {size(b)} per call"] = engine(xts, data, b, True)
        cases[f"engine decrypt, {size(b)} per call"] = engine(xts, ct, b, False)
    cases[f"engine encrypt AES-XTS-256, {size(batches[-1])} per call"] = engine(
        xts256, data, batches[-1], True)
    sweeping, plain, integ = plats["sweep"], plats["repeat"], plats["integrity"]
    cases["platform write_lines, 4 KiB per call, first touch"] = writes(sweeping, 4096, False)
    cases["platform read_lines, 4 KiB per call, first touch"] = reads(sweeping, 4096, False)
    cases["platform write_lines, 4 KiB per call, page seen before"] = writes(plain, 4096)
    cases["platform read_lines, 4 KiB per call, page seen before"] = reads(plain, 4096)
    cases["platform write_lines, 4 KiB per call, seen before, integrity"] = writes(integ, 4096)
    cases["platform read_lines, 4 KiB per call, seen before, integrity"] = reads(integ, 4096)
    cases["platform write_lines, 1 MiB per call"] = writes(plain, MIB)
    cases["platform read_lines, 1 MiB per call"] = reads(plain, MIB)
    cases["platform write_lines, 1 MiB per call, integrity"] = writes(integ, MIB)
    cases["platform read_lines, 1 MiB per call, integrity"] = reads(integ, MIB)
    return cases


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


def run_interleaved(cases: dict[str, Callable[[], int]],
                    rounds: int) -> dict[str, dict[str, float]]:
    """Median units per second of wall-clock time and of this process's CPU time."""
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            w, c, units = _timed(fn)
            wall[name].append(units / w)
            cpu[name].append(units / max(c, 1e-9))
    return {name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])}
            for name in cases}


def _table(title: str, results: dict[str, dict[str, float]], unit: str, scale: float,
           ref: str, ratio_fmt: str) -> Table:
    """Wall and CPU rates of each case, and the wall rate relative to the baseline case."""
    base = next(v for k, v in results.items() if k.startswith("baseline"))["wall"]
    t = Table(title=title)
    t.add_column("case")
    t.add_column(f"{unit} wall", justify="right")
    t.add_column(f"{unit} CPU", justify="right")
    t.add_column(f"x {ref}", justify="right")
    for name, r in results.items():
        t.add_row(name, f"{r['wall'] / scale:,.0f}", f"{r['cpu'] / scale:,.0f}",
                  ratio_fmt.format(r["wall"] / base))
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "tme_platform.json")
    args = ap.parse_args()
    total = 2 * MIB if args.quick else 16 * MIB
    nops = 20_000 if args.quick else 200_000
    load_before = os.getloadavg()

    tput = run_interleaved(throughput_cases(total), args.rounds)
    ops = run_interleaved(ops_cases(nops, args.rounds), args.rounds)

    console = Console()
    title = f"(median of {args.rounds} interleaved rounds; load average {load_before[0]:.1f})"
    console.print(_table(f"Line encryption throughput {title}", tput, "MB/s", 1e6, "naive",
                         "{:.1f}"))
    console.print(_table(f"Random single-line accesses {title}", ops, "K ops/s", 1e3,
                         "bytearray", "{:.2f}"))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "tme_platform",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"python": sys.version.split()[0], "machine": host.machine(),
                 "cpus": os.cpu_count(), "load_average_before": load_before,
                 "load_average_after": os.getloadavg()},
        "rounds": args.rounds,
        "bytes_per_throughput_case": total,
        "ops_per_round": nops,
        "throughput_bytes_per_second": tput,
        "ops_per_second": ops,
    }, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
