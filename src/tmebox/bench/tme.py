"""The emulated TME-MK side: line encryption, relocation, integrity, and the tme backend.

Platform figures (always available): lines encrypted and decrypted per second
through the bulk interface the tme backend uses (write_lines / read_lines),
relocation of lines from one KeyID to another (rekey) in MiB/s, each with and
without integrity, interleaved over rounds. If the tme backend is installed,
the same kernel image is also timed on it and on the native backend, and the
slowdown of emulation is reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmebox.bench import stats
from tmebox.bench.errors import BenchError

LINE = 64


@dataclass(frozen=True)
class TmeResult:
    what: str
    integrity: bool
    value: float
    unit: str
    spread: float


def _platform_cases(size: int, integrity: bool) -> dict[str, tuple[Callable[[], float], str]]:
    from tmebox.tme import Platform

    p = Platform(memory_size=4 * size, keyid_bits=6, integrity=integrity)
    for k in (1, 2):
        if p.pconfig(k, "set_key_random").name != "PROG_SUCCESS":
            raise BenchError(f"PCONFIG SET_KEY_RANDOM for KeyID {k} failed")
    data = os.urandom(size)
    nlines = size // LINE
    # Separate regions, so that relocation never changes the key decrypt() reads with.
    p.write_lines(0, data, 1)
    p.write_lines(2 * size, data, 1)
    state = {"src": 1}

    def encrypt() -> float:
        t0 = time.perf_counter()
        p.write_lines(size, data, 1)
        return nlines / (time.perf_counter() - t0)

    def decrypt() -> float:
        t0 = time.perf_counter()
        p.read_lines(0, nlines, 1)
        return nlines / (time.perf_counter() - t0)

    def relocate() -> float:
        src = state["src"]
        t0 = time.perf_counter()
        p.rekey(2 * size, size, src, 3 - src)
        dt = time.perf_counter() - t0
        state["src"] = 3 - src
        return size / dt / (1 << 20)

    return {"encrypt": (encrypt, "lines/s"), "decrypt": (decrypt, "lines/s"),
            "relocate": (relocate, "MiB/s")}


def platform_throughput(size: int, rounds: int) -> list[TmeResult]:
    """Interleaved rounds of every case with and without integrity; medians."""
    cases = {}
    for integrity in (False, True):
        for name, (fn, unit) in _platform_cases(size, integrity).items():
            cases[(name, integrity)] = (fn, unit)
    samples: dict[tuple[str, bool], list[float]] = {k: [] for k in cases}
    keys = list(cases)
    for _r, key in stats.interleave([f"{n}|{i}" for n, i in keys], rounds):
        name, integ = key.split("|")
        k = (name, integ == "True")
        samples[k].append(cases[k][0]())
    out = []
    for (name, integrity), xs in samples.items():
        s = stats.summarize(xs)
        out.append(TmeResult(name, integrity, s.median, cases[(name, integrity)][1],
                             s.rel_spread))
    return out


def backend_slowdown(image: Path, scale: int, rounds: int) -> list[TmeResult]:
    """The same image's bench_iter() on the native backend and on the tme backend with and
    without integrity, interleaved; and the guest instructions per second on tme, from
    one extra run that counts them (an instruction hook: it is not timed)."""
    from tmebox.runtime.api import Runtime

    setups: dict[str, tuple[str, dict[str, Any]]] = {
        "native": ("native", {}), "tme": ("tme", {}),
        "tme-integrity": ("tme", {"integrity": True})}
    times: dict[str, list[float]] = {name: [] for name in setups}
    runtimes = {name: Runtime(backend=b, max_sandboxes=1, **kw)
                for name, (b, kw) in setups.items()}
    try:
        sbs = {}
        for name, rt in runtimes.items():
            sb = rt.spawn(rt.load(image), stdout=bytearray())
            if sb.call("bench_init", scale) != 0:
                raise BenchError(f"{image.name}: bench_init failed on the {name} backend")
            sb.call("bench_iter")
            sbs[name] = sb
        for _r, name in stats.interleave(list(times), rounds):
            sbs[name].call("bench_iter")
            times[name].append(sbs[name].call("bench_cpu") / 1e9)  # the harness's own CPU time
        sums = {name: sb.call("bench_checksum") for name, sb in sbs.items()}
        if len(set(sums.values())) != 1:
            raise BenchError(f"{image.name}: the backends computed different checksums {sums}")
        instructions = _count_instructions(runtimes["tme"], sbs["tme"])
    finally:
        for rt in runtimes.values():
            rt.close()
    nat, tme, mac = (stats.summarize(times[n]) for n in setups)
    return [TmeResult(f"{image.stem} on tme", False, tme.median * 1e3, "ms", tme.rel_spread),
            TmeResult(f"{image.stem} on tme", True, mac.median * 1e3, "ms", mac.rel_spread),
            TmeResult(f"{image.stem} on native", False, nat.median * 1e3, "ms", nat.rel_spread),
            TmeResult("tme slowdown", False, stats.ratio(tme.median, nat.median), "x", 0.0),
            TmeResult("tme slowdown", True, stats.ratio(mac.median, nat.median), "x", 0.0),
            TmeResult("guest instructions", False, instructions / tme.median / 1e6, "M/s",
                      tme.rel_spread)]


def _count_instructions(rt: Any, sb: Any) -> int:
    """Instructions one bench_iter() executes in the emulator (unicorn's code hook)."""
    from unicorn import UC_HOOK_CODE

    count = 0

    def hook(uc: object, address: int, size: int, user: object) -> None:
        nonlocal count
        count += 1

    uc = rt.backend.uc
    handle = uc.hook_add(UC_HOOK_CODE, hook)
    uc.ctl_flush_tb()  # code translated before the hook existed would not call it
    try:
        sb.call("bench_iter")
    finally:
        uc.hook_del(handle)
        uc.ctl_flush_tb()
    if not count:
        raise BenchError("the tme backend ran bench_iter() without executing an instruction")
    return count
