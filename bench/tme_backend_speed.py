"""Speed of the tme backend (docs/tme-backend.md quotes its output).

Guest instruction throughput (compute-bound, memory sweep, pointer chase) with the same
hand-assembled image on the tme and native backends; the cost of a sandbox call and of a
switch between sandboxes, against a call that does not switch, measured in the same run.
Cases run interleaved (round-robin, `--rounds` times); each figure is the median.

    .venv/bin/python bench/tme_backend_speed.py [--rounds 7] [--quick]
    .venv/bin/python bench/tme_backend_speed.py --density 32767   # every KeyID at once
"""

from __future__ import annotations

import argparse
import json
import platform as host
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "runtime"))

from asm_image import assemble  # noqa: E402

import tmebox  # noqa: E402

# Instructions per loop iteration are counted from the source below.
BODY = r"""
    .globl main
main:
    xorl %eax, %eax
    ret

    .globl spin_alu         # rdi iterations of 8 register-only instructions
spin_alu:
    movl %edi, %ecx
    xorl %eax, %eax
1:  addq %rcx, %rax
    imulq $3, %rax, %rdx
    xorq %rdx, %rax
    rolq $7, %rax
    subq %rcx, %rdx
    addq %rdx, %rax
    decl %ecx
    jnz 1b
    ret

    .globl sweep            # edx rounds over esi bytes at edi: load, add, store per line
sweep:
    xorl %eax, %eax
2:  movl %edi, %ecx
    leal (%rdi,%rsi), %r8d
1:  movq %gs:(%ecx), %r9
    addq %r9, %rax
    movq %rax, %gs:8(%ecx)
    addl $64, %ecx
    cmpl %r8d, %ecx
    jb 1b
    decl %edx
    jnz 2b
    ret

    .globl chase            # esi dependent loads along the chain that starts at edi
chase:
    movl %edi, %eax
1:  movl %gs:(%eax), %eax
    decl %esi
    jnz 1b
    ret

    .globl touch            # write one word on each of esi pages from edi
touch:
1:  movq %rsi, %gs:(%edi)
    addl $4096, %edi
    decl %esi
    jnz 1b
    ret
"""

ALU_PER_ITER = 8
SWEEP_PER_LINE = 6
CHASE_PER_STEP = 3


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def one_round(e: tuple, sizes: tuple[int, ...], shared_case: bool) -> dict[str, float]:
    """One sample of every case for one backend's sandboxes."""
    rt, a, b, sbuf, cbuf, pa, pb, shared = e
    alu_iters, sweep_bytes, sweep_rounds, chase_steps, calls = sizes
    lines = sweep_bytes // 64 * sweep_rounds
    out = {
        "alu": ALU_PER_ITER * alu_iters / timed(lambda: a.call("spin_alu", alu_iters)),
        "sweep": SWEEP_PER_LINE * lines / timed(
            lambda: a.call("sweep", sbuf, sweep_bytes, sweep_rounds)),
        "chase": CHASE_PER_STEP * chase_steps / timed(lambda: a.call("chase", cbuf, chase_steps)),
        # a call round trip, and calls that alternate between two sandboxes (16 pages each)
        "call_us": timed(lambda: [a.call("touch", pa, 16) for _ in range(calls)]) / calls * 1e6,
        "switch_us": timed(lambda: [(a.call("touch", pa, 16), b.call("touch", pb, 16))
                                    for _ in range(calls // 2)]) / (calls // 2 * 2) * 1e6,
    }
    img = a.image
    out["spawn_us"] = timed(lambda: [rt.spawn(img).destroy() for _ in range(20)]) / 20 * 1e6
    if shared_case:
        # Both sandboxes write the same 16 pool pages (b through its own key, so it corrupts
        # a's lines: this measures the mechanism, not a sane program): every switch writes
        # 16 pages back (encrypt) and fills 16 pages (decrypt).
        n = max(calls // 10, 10)
        out["shared_switch_us"] = timed(lambda: [(a.call("touch", shared, 16),
                                                  b.call("touch", shared, 16))
                                                 for _ in range(n)]) / (2 * n) * 1e6
    return out


def run(rounds: int, quick: bool) -> dict[str, float]:
    plan = assemble(BODY, name="bench")
    alu_iters = 500_000 if quick else 5_000_000
    sweep_bytes, sweep_rounds = (1 << 20, 4) if quick else (1 << 20, 32)
    chase_bytes, chase_steps = (4 << 20, 200_000) if quick else (4 << 20, 2_000_000)
    calls = 500 if quick else 3000

    sizes = (alu_iters, sweep_bytes, sweep_rounds, chase_steps, calls)
    rts = {"native": tmebox.Runtime(backend="native", max_sandboxes=8),
           "tme": tmebox.Runtime(backend="tme", max_sandboxes=8, pool_size=128 << 20,
                                 heap_size=8 << 20)}
    env = {}
    for name, rt in rts.items():
        img = rt.load_unverified(plan)
        a, b = rt.spawn(img), rt.spawn(img)
        sweep_buf = a.alloc(sweep_bytes)
        chase_buf = a.alloc(chase_bytes)
        # A random cycle through the 64-byte slots (window offsets, 32-bit).
        slots = list(range(chase_bytes // 64))
        random.Random(1).shuffle(slots)
        chain = bytearray(chase_bytes)
        lo = chase_buf & 0xFFFF_FFFF
        for i, s in enumerate(slots):
            nxt = lo + slots[(i + 1) % len(slots)] * 64
            chain[s * 64:s * 64 + 4] = nxt.to_bytes(4, "little")
        a.memory.write(chase_buf, bytes(chain))
        pages_a, pages_b = a.alloc(16 * 4096), b.alloc(16 * 4096)
        shared = a.alloc(16 * 4096)
        env[name] = (rt, a, b, sweep_buf, chase_buf, pages_a, pages_b, shared)
        a.call("sweep", sweep_buf, sweep_bytes, 1)  # first touch outside the timing
        a.call("chase", chase_buf, 1000)

    res: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, e in env.items():
            for key, value in one_round(e, sizes, name == "tme").items():
                res.setdefault(f"{name}.{key}", []).append(value)
    for rt, *_ in env.values():
        rt.close()
    return {k: statistics.median(v) for k, v in res.items()}


TINY = r"""
    .globl main
main:
    movl $42, %eax
    ret

    .globl bump             # *(long *)p += v, returns the new value
bump:
    movq %gs:(%edi), %rax
    addq %rsi, %rax
    movq %rax, %gs:(%edi)
    ret
"""


def density(n: int) -> dict[str, float]:
    """Spawn n sandboxes of a tiny image (16 KiB stack, 4 KiB heap) on one pool, each on
    its own KeyID; check a sample of them still work, then that one more is refused."""
    import asm_image

    asm_image.STACK = 16 << 10
    plan = assemble(TINY, name="tiny")
    t0 = time.perf_counter()
    rt = tmebox.Runtime(backend="tme", max_sandboxes=n + 1, pool_size=5 << 28, heap_size=4096,
                        resident_pages=4096)
    img = rt.load_unverified(plan)
    setup = time.perf_counter() - t0
    sbs = []
    t0 = time.perf_counter()
    for _ in range(n):
        sbs.append(rt.spawn(img))
    spawn = time.perf_counter() - t0
    ok = 0
    sample = sbs[::max(1, n // 500)]
    for sb in sample:
        q = sb.alloc(64)
        sb.call("bump", q, 5)
        ok += sb.call("bump", q, 0) == 5
    assert ok == len(sample), f"{len(sample) - ok} sandboxes lost their data"
    try:
        rt.spawn(img)
        refused = ""
    except tmebox.OutOfSandboxes as e:
        refused = str(e)
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) << 10
    keyids = len({sb.base >> 32 for sb in sbs})
    rt.close()
    Console().print(f"{n:,} sandboxes, {keyids:,} distinct KeyIDs, spawned in {spawn:.1f} s "
                    f"({spawn / n * 1e6:.0f} us each, runtime set-up {setup:.1f} s), "
                    f"{rss / 2**30:.2f} GiB resident; {ok} sampled still work; one more: "
                    f"{refused or 'accepted'}")
    return {"sandboxes": n, "keyids": keyids, "spawn_s": spawn, "rss_bytes": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--density", type=int, metavar="N",
                    help="instead: spawn N tiny sandboxes at once (32767 = every KeyID)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "tme_backend_speed.json")
    args = ap.parse_args()
    if args.density:
        density(args.density)
        return 0
    med = run(args.rounds, args.quick)
    t = Table(title=f"tme backend ({args.rounds} interleaved rounds, medians)")
    t.add_column("case")
    t.add_column("tme", justify="right")
    t.add_column("native", justify="right")
    t.add_column("tme / native", justify="right")
    for key, label in (("alu", "compute-bound, M insn/s"), ("sweep", "memory sweep, M insn/s"),
                       ("chase", "pointer chase, M insn/s")):
        tm, nat = med[f"tme.{key}"] / 1e6, med[f"native.{key}"] / 1e6
        t.add_row(label, f"{tm:,.1f}", f"{nat:,.1f}", f"{tm / nat:.3f}")
    for key, label in (("call_us", "call touching 16 pages, us"),
                       ("switch_us", "call that switches sandbox, us"),
                       ("spawn_us", "spawn + destroy, us")):
        t.add_row(label, f"{med[f'tme.{key}']:.1f}", f"{med[f'native.{key}']:.1f}",
                  f"{med[f'tme.{key}'] / med[f'native.{key}']:.1f}")
    switch = med["tme.switch_us"] - med["tme.call_us"]
    t.add_row("switch cost (switching - same-sandbox call), us", f"{switch:.1f}", "", "")
    t.add_row("switch over 16 shared pages (write back + fill), us",
              f"{med['tme.shared_switch_us']:.1f}", "", "")
    Console().print(t)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "host": host.processor() or host.machine(), "python": sys.version.split()[0],
        "rounds": args.rounds, "quick": args.quick, "medians": med,
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
