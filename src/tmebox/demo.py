"""`tmebox demo`: many tenants in one process, one of them Heartbleed-buggy, no leak.

The demo builds two tenant programs from C (a well-behaved service that keeps a secret, and
a service with a Heartbleed-style over-read plus arbitrary peek/poke), spawns many tenants in
one process, drives requests through them, lets the buggy tenant attack every neighbour, and
prints what it could and could not reach.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tmebox.errors import SandboxFault, TmeboxError

SECRET_LEN = 32
OVERREAD = 64 << 10


@dataclass
class DemoResult:
    tenants: int
    requests: int
    calls_per_second: float
    bytes_per_tenant: float
    overread_bytes: int
    own_bytes_leaked: int
    secrets_leaked: int
    control_peek_works: bool
    peeks: int
    peeks_leaked: int
    pokes: int
    victims_corrupted: int
    faults_contained: int


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "tmebox" / "demo"


def build_tenants(isolation: str = "code+data") -> dict[str, Path]:
    """Compile the tenant programs shipped with tmebox (cached by tmebox cc's output path)."""
    from tmebox.toolchain import cc

    out_dir = _cache_dir() / isolation.replace("+", "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    src_dir = resources.files("tmebox") / "demo_tenants"
    for name in ("service", "heartbleed"):
        src = out_dir / f"{name}.c"
        text = (src_dir / f"{name}.c").read_text()
        if not src.exists() or src.read_text() != text:
            src.write_text(text)
        image = out_dir / f"{name}.box"
        if not image.exists() or image.stat().st_mtime < src.stat().st_mtime:
            cc.build(sources=[src], output=image, isolation=isolation, opt="2",
                     include_dirs=[], defines=[], compile_only=False, compiler="gcc", libs=[])
        images[name] = image
    return images


def _memory_bytes() -> int:
    """Resident memory plus page tables of this process."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmPTE"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0) + fields.get("VmPTE", 0)


def run_demo(tenants: int = 1000, requests: int = 10000, backend: str = "native",
             console: Console | None = None, seed: int | None = None) -> int:
    result = demo(tenants=tenants, requests=requests, backend=backend, console=console,
                  seed=seed)
    safe = (result.secrets_leaked == 0 and result.peeks_leaked == 0
            and result.victims_corrupted == 0 and result.control_peek_works)
    return 0 if safe else 2


def demo(tenants: int = 1000, requests: int = 10000, backend: str = "native",
         console: Console | None = None, seed: int | None = None) -> DemoResult:
    import tmebox

    if tenants < 2:
        raise TmeboxError(f"--tenants must be at least 2, got {tenants}")
    console = console or Console(stderr=True)
    rng = random.Random(seed)
    with console.status("compiling the tenant programs (cached after the first run)"):
        images = build_tenants()

    with tmebox.Runtime(backend=backend, max_sandboxes=tenants) as rt, Progress(console=console,
                                                          transient=True) as progress:
        service = rt.load(images["service"])
        buggy_image = rt.load(images["heartbleed"])

        before = _memory_bytes()
        task = progress.add_task(f"spawning {tenants:,} tenants", total=tenants)
        sandboxes, secrets, secret_addrs, bufs = [], [], [], []
        for _ in range(tenants - 1):
            sb = rt.spawn(service, stdout=bytearray(), stderr=bytearray())
            secret = rng.randbytes(SECRET_LEN)
            buf = sb.alloc(4096)
            sb.memory.write(buf, secret)
            if sb.call("provision", buf, SECRET_LEN) != 0:
                raise RuntimeError("a tenant could not be provisioned")
            sandboxes.append(sb)
            secrets.append(secret)
            secret_addrs.append(sb.call("secret_address"))
            bufs.append(buf)
            progress.advance(task)
        attacker = rt.spawn(buggy_image, stdout=bytearray(), stderr=bytearray())
        progress.advance(task)
        per_tenant = (_memory_bytes() - before) / tenants

        task = progress.add_task(f"serving {requests:,} requests", total=requests)
        start = time.perf_counter()
        for i in range(requests):
            k = rng.randrange(len(sandboxes))
            sb, buf = sandboxes[k], bufs[k]
            guess = secrets[k] if i % 2 else rng.randbytes(SECRET_LEN)
            sb.memory.write(buf, guess)
            sb.call("handle", buf, SECRET_LEN, buf + 2048, 1)
            if sb.memory.read(buf + 2048, 1) != (b"Y" if guess == secrets[k] else b"N"):
                raise RuntimeError(f"tenant {k} answered a request wrongly")
            if i % 256 == 0:
                progress.update(task, completed=i)
        elapsed = time.perf_counter() - start
        progress.update(task, completed=requests)

        # The attack, from inside the buggy tenant.
        req = attacker.alloc(OVERREAD + 4096)
        resp = attacker.alloc(OVERREAD + 4096)
        attacker.memory.write(req, b"ping")
        attacker.call("heartbeat", req, 4, resp, OVERREAD)
        leaked = attacker.memory.read(resp, OVERREAD)
        secrets_leaked = sum(1 for s in secrets if s in leaked)
        own_bytes = OVERREAD - leaked.count(0)

        # Control: the same peek does read a secret at an address the attacker owns, so a
        # zero below means isolation, not a broken attack.
        own_secret = rng.randbytes(SECRET_LEN)
        scratch = attacker.alloc(4096)
        attacker.memory.write(scratch + 1024, own_secret)
        attacker.call("peek", scratch + 1024, scratch, SECRET_LEN)
        control_ok = attacker.memory.read(scratch, SECRET_LEN) == own_secret

        task = progress.add_task("attacking every neighbour", total=len(sandboxes))
        peeks_leaked = corrupted = 0
        for k, sb in enumerate(sandboxes):
            attacker.call("peek", secret_addrs[k], scratch, SECRET_LEN)
            if attacker.memory.read(scratch, SECRET_LEN) == secrets[k]:
                peeks_leaked += 1
            attacker.memory.write(scratch, b"\0" * SECRET_LEN)
            attacker.call("poke", secret_addrs[k], scratch, SECRET_LEN)
            sb.memory.write(bufs[k], secrets[k])
            sb.call("handle", bufs[k], SECRET_LEN, bufs[k] + 2048, 1)
            if sb.memory.read(bufs[k] + 2048, 1) != b"Y":
                corrupted += 1
            progress.advance(task)

        faults = 0
        try:
            attacker.call("crash")
        except SandboxFault:
            faults += 1
        # The host and every other tenant keep running after the fault.
        sb = sandboxes[0]
        sb.memory.write(bufs[0], secrets[0])
        sb.call("handle", bufs[0], SECRET_LEN, bufs[0] + 2048, 1)
        if sb.memory.read(bufs[0] + 2048, 1) != b"Y":
            raise RuntimeError("a neighbour stopped working after the attacker's fault")

        for sb in sandboxes:
            sb.destroy()
        attacker.destroy()

    result = DemoResult(
        tenants=tenants, requests=requests, calls_per_second=requests / elapsed,
        bytes_per_tenant=per_tenant, overread_bytes=len(leaked), own_bytes_leaked=own_bytes,
        secrets_leaked=secrets_leaked, control_peek_works=control_ok,
        peeks=len(sandboxes), peeks_leaked=peeks_leaked,
        pokes=len(sandboxes), victims_corrupted=corrupted, faults_contained=faults)
    _print_summary(console, result, backend)
    return result


def _print_summary(console: Console, r: DemoResult, backend: str) -> None:
    table = Table(title=f"tmebox demo ({backend} backend)", show_header=False)
    table.add_row("tenants in one process", f"{r.tenants:,}")
    table.add_row("requests served", f"{r.requests:,} ({r.calls_per_second:,.0f} calls/s)")
    table.add_row("memory per tenant", f"{r.bytes_per_tenant / 1024:.1f} KiB")
    table.add_row("Heartbleed over-read", f"{r.overread_bytes:,} bytes read "
                  f"({r.own_bytes_leaked:,} non-zero: the tenant's own memory), "
                  f"{r.secrets_leaked} neighbour secrets in them")
    table.add_row("reads of neighbours' secret addresses",
                  f"{r.peeks:,} tried, {r.peeks_leaked} returned the secret "
                  f"(control: own secret {'read back' if r.control_peek_works else 'NOT read'})")
    table.add_row("writes to neighbours' secrets",
                  f"{r.pokes:,} tried, {r.victims_corrupted} neighbours corrupted")
    table.add_row("faults contained", f"{r.faults_contained} (every other tenant kept running)")
    Console().print(table)
