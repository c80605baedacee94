"""The escape fuzzer's long run: millions of sequences the verifier accepts, run on this CPU.

Prints a progress line per batch on stderr and a summary at the end; --report writes the
counts, the rate, the commit and every escape (with the bytes and registers to replay it) as
JSON. Exits 1 if anything escaped. docs/escape-fuzzer.md quotes its figures.

Usage: bench/escape_fuzz.py [--sequences N] [--seed S] [--modes data,code+data]
                            [--report OUT.json] [--weaken NAME]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tmebox.fuzz import campaign
from tmebox.fuzz.campaign import Stats
from tmebox.fuzz.weaken import WEAKENINGS, weakened
from tmebox.trusted import abi

PROGRESS_EVERY = 20.0  # seconds between progress lines


def _commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=Path(__file__).parent)
    return r.stdout.strip() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--modes", default=",".join(abi.ISOLATION_MODES))
    ap.add_argument("--report", metavar="OUT.json")
    ap.add_argument("--weaken", choices=sorted(WEAKENINGS),
                    help="run against a deliberately weakened verifier (the self-test)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in abi.ISOLATION_MODES]
    if bad or args.sequences < 1:
        ap.error(f"--modes: unknown {bad}" if bad else "--sequences must be at least 1")
    last = [0.0]

    def progress(stats: Stats) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY:
            last[0] = time.monotonic()
            done = sum(stats.generated.values())
            print(f"[{done / args.sequences:6.1%}] {stats.summary()}", file=sys.stderr,
                  flush=True)

    print(f"escape fuzzer: {args.sequences:,} sequences, seed {args.seed}, modes {modes}"
          + (f", WEAKENED: {args.weaken}" if args.weaken else ""), file=sys.stderr)
    if args.weaken:
        with weakened(args.weaken):
            stats = campaign.run(args.sequences, args.seed, modes, progress=progress)
    else:
        stats = campaign.run(args.sequences, args.seed, modes, progress=progress)
    print(stats.summary())
    for escape in stats.escapes[:10]:
        print(escape.report())
    if args.report:
        doc = {
            "command": " ".join(["bench/escape_fuzz.py", *sys.argv[1:]]),
            "commit": _commit(), "seed": args.seed, "modes": modes, "weakened": args.weaken,
            "generated": dict(stats.generated), "verified": stats.verified,
            "accepted": dict(stats.accepted), "data_mode_skipped": stats.skipped,
            "outcomes": {o.value: n for o, n in stats.outcomes.items()},
            "contained_faults": dict(stats.reasons), "seconds": round(stats.seconds, 1),
            "sequences_per_second": round(sum(stats.generated.values()) / stats.seconds, 1),
            "escapes": [e.report() for e in stats.escapes],
        }
        Path(args.report).write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if stats.escapes else 0


if __name__ == "__main__":
    sys.exit(main())
