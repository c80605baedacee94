"""`tmebox demo`: many tenants in one process, one of them Heartbleed-buggy, no leak.

The demo builds two tenant programs from C (a well-behaved service that keeps a secret, and
a service with a Heartbleed-style over-read plus arbitrary peek/poke), spawns many tenants in
one process, drives requests through them, lets the buggy tenant attack every neighbour, and
prints what it could and could not reach.
"""

from __future__ import annotations

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
# tme backend: one physical pool for every tenant (at most 2 GiB with 15 KeyID bits).
TME_POOL_MAX = 2 << 30
TME_POOL_BASE = 64 << 20
TME_POOL_PER_TENANT = 2 << 20
TME_HEAP = 256 << 10


@dataclass
class DemoResult:
    backend: str
    integrity: bool
    tenants: int
    requests: int
    calls_per_second: float
    bytes_per_tenant: float
    overread_bytes: int  # bytes the Heartbleed request returned (0 if a machine check hit it)
    overread_nonzero: int
    secrets_leaked: int  # neighbour secrets found anywhere in the over-read
    control_peek_works: bool  # the peek primitive does read the attacker's own memory
    peeks: int
    peeks_leaked: int  # peeks that returned the neighbour's secret
    peek_bytes_matching: float  # fraction of peeked bytes equal to the secret's (chance: 1/256)
    pokes: int
    victims_silently_changed: int  # victims that kept running but lost their secret
    machine_checks: int  # tampering or foreign reads caught by TME-MK integrity
    dram_secrets_visible: int  # tme: secrets found in plaintext in the raw pool
    faults_contained: int
    host_calls: int = 0  # host_audit() calls the tenants made (one per answered request)

    @property
    def safe(self) -> bool:
        """Nothing leaked, the attack primitive itself worked, and (native) nothing changed."""
        leaked = self.secrets_leaked or self.peeks_leaked or self.dram_secrets_visible
        if leaked or not self.control_peek_works:
            return False
        # TME-MK without integrity cannot stop a write, only make it useless (docs/tme.md,
        # "Integrity").
        return self.backend == "tme" and not self.integrity or self.victims_silently_changed == 0


def build_tenants(isolation: str = "code+data") -> dict[str, Path]:
    """Compile the tenant programs shipped with tmebox (cached by source and toolchain)."""
    from tmebox.programs import compile_cached

    src_dir = resources.files("tmebox") / "demo_tenants"
    images = {}
    for name in ("service", "heartbleed"):
        with resources.as_file(src_dir / f"{name}.c") as src:
            images[name] = compile_cached(Path(src), isolation)
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
             integrity: bool = False, console: Console | None = None,
             seed: int | None = None) -> int:
    result = demo(tenants=tenants, requests=requests, backend=backend, integrity=integrity,
                  console=console, seed=seed)
    return 0 if result.safe else 2


def _runtime_options(backend: str, tenants: int, integrity: bool) -> dict:
    if backend != "tme":
        if integrity:
            raise TmeboxError("--integrity needs --backend tme")
        return {}
    # Each tenant takes its code and data, the image's stack and a heap from the one pool.
    pool = min(TME_POOL_MAX, TME_POOL_BASE + tenants * TME_POOL_PER_TENANT)
    return {"pool_size": pool, "heap_size": TME_HEAP, "integrity": integrity}


class _Attacker:
    """The buggy tenant. A machine check ends a sandbox, so it is respawned when one hits."""

    def __init__(self, rt, image) -> None:
        self.rt, self.image = rt, image
        self.respawns = 0
        self._spawn()

    def _spawn(self) -> None:
        self.sb = self.rt.spawn(self.image, stdout=bytearray(), stderr=bytearray())
        self.req = self.sb.alloc(OVERREAD + 4096)
        self.resp = self.sb.alloc(OVERREAD + 4096)
        self.scratch = self.sb.alloc(4096)

    def call(self, name: str, *args: int) -> bool:
        """Run one attack step; False if TME-MK integrity stopped it with a machine check."""
        try:
            self.sb.call(name, *args)
            return True
        except SandboxFault as e:
            if e.kind != "machine-check":
                raise
            self.sb.destroy()
            self.respawns += 1
            self._spawn()
            return False


def _serves(sb, buf: int, secret: bytes) -> bool | None:
    """Does the tenant still recognise its secret? None: a machine check stopped it."""
    sb.memory.write(buf, secret)
    try:
        sb.call("handle", buf, SECRET_LEN, buf + 2048, 1)
    except SandboxFault as e:
        if e.kind != "machine-check":
            raise
        return None
    return sb.memory.read(buf + 2048, 1) == b"Y"


def demo(tenants: int = 1000, requests: int = 10000, backend: str = "native",
         integrity: bool = False, console: Console | None = None,
         seed: int | None = None) -> DemoResult:
    import tmebox

    if tenants < 3:
        raise TmeboxError(f"--tenants must be at least 3, got {tenants}")
    if requests < 1:
        raise TmeboxError(f"--requests must be at least 1, got {requests}")
    options = _runtime_options(backend, tenants, integrity)
    console = console or Console(stderr=True)
    rng = random.Random(seed)
    with console.status("compiling the tenant programs (cached after the first run)"):
        images = build_tenants()

    audited = [0, 0]  # answers, of which matched

    def host_audit(caller: tmebox.Sandbox, served: int, matched: bool) -> None:
        audited[0] += 1
        audited[1] += matched

    with tmebox.Runtime(backend=backend, max_sandboxes=tenants + 1, **options) as rt, \
            Progress(console=console, transient=True) as progress:
        rt.define("host_audit", host_audit)
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
                raise TmeboxError("a tenant could not be provisioned")
            sandboxes.append(sb)
            secrets.append(secret)
            secret_addrs.append(sb.call("secret_address"))
            bufs.append(buf)
            progress.advance(task)
        attacker = _Attacker(rt, buggy_image)
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
                raise TmeboxError(f"tenant {k} answered a request wrongly")
            if i % 256 == 0:
                progress.update(task, completed=i)
        elapsed = time.perf_counter() - start
        progress.update(task, completed=requests)

        # Heartbleed: the request claims 64 KiB, the payload is 4 bytes.
        machine_checks = 0
        attacker.sb.memory.write(attacker.req, b"ping")
        leaked = b""
        if attacker.call("heartbeat", attacker.req, 4, attacker.resp, OVERREAD):
            leaked = attacker.sb.memory.read(attacker.resp, OVERREAD)
        else:
            machine_checks += 1
        secrets_leaked = sum(1 for s in secrets if s in leaked)

        # Control: the same peek does read a secret at an address the attacker owns, so a
        # zero below means isolation, not a broken attack.
        own_secret = rng.randbytes(SECRET_LEN)
        attacker.sb.memory.write(attacker.scratch + 1024, own_secret)
        attacker.call("peek", attacker.scratch + 1024, attacker.scratch, SECRET_LEN)
        control_ok = attacker.sb.memory.read(attacker.scratch, SECRET_LEN) == own_secret

        # Every neighbour but the first (the bystander checked at the end) is attacked.
        victims = range(1, len(sandboxes))
        task = progress.add_task("attacking the neighbours", total=len(victims))
        peeks_leaked = matching = changed = 0
        for k in victims:
            if attacker.call("peek", secret_addrs[k], attacker.scratch, SECRET_LEN):
                got = attacker.sb.memory.read(attacker.scratch, SECRET_LEN)
                peeks_leaked += got == secrets[k]
                matching += sum(a == b for a, b in zip(got, secrets[k], strict=True))
            else:
                machine_checks += 1
            attacker.sb.memory.write(attacker.scratch, b"\0" * SECRET_LEN)
            attacker.call("poke", secret_addrs[k], attacker.scratch, SECRET_LEN)
            still = _serves(sandboxes[k], bufs[k], secrets[k])
            if still is None:
                machine_checks += 1
            elif not still:
                changed += 1
            progress.advance(task)

        dram_visible = 0
        if backend == "tme":
            from tmebox.runtime.tme import TmeBackend

            tme = rt.backend
            assert isinstance(tme, TmeBackend)
            platform = tme.platform
            tme.sync()  # write the emulator's plaintext cache back to the pool
            for addr, secret in zip(secret_addrs, secrets, strict=True):
                dram_visible += platform.dram(addr & 0xFFFF_FFFF, SECRET_LEN) == secret

        faults = 0
        try:
            attacker.sb.call("crash")
        except SandboxFault:
            faults += 1
        # The host and the bystander keep running after the fault.
        if not _serves(sandboxes[0], bufs[0], secrets[0]):
            raise TmeboxError("a neighbour stopped working after the attacker's fault")

    result = DemoResult(
        backend=backend, integrity=integrity, tenants=tenants, requests=requests,
        calls_per_second=requests / elapsed, bytes_per_tenant=per_tenant,
        overread_bytes=len(leaked), overread_nonzero=len(leaked) - leaked.count(0),
        secrets_leaked=secrets_leaked, control_peek_works=control_ok,
        peeks=len(victims), peeks_leaked=peeks_leaked,
        peek_bytes_matching=matching / max(1, len(victims) * SECRET_LEN),
        pokes=len(victims), victims_silently_changed=changed, machine_checks=machine_checks,
        dram_secrets_visible=dram_visible, faults_contained=faults, host_calls=audited[0])
    _print_summary(result)
    return result


def _print_summary(r: DemoResult) -> None:
    mode = f"{r.backend} backend" + (", integrity" if r.integrity else "")
    table = Table(title=f"tmebox demo ({mode})", show_header=False)
    table.add_row("tenants in one process", f"{r.tenants:,}")
    table.add_row("requests served", f"{r.requests:,} ({r.calls_per_second:,.0f} calls/s)")
    table.add_row("memory per tenant", f"{r.bytes_per_tenant / 1024:.1f} KiB")
    overread = (f"{r.overread_bytes:,} bytes returned ({r.overread_nonzero:,} non-zero), "
                f"{r.secrets_leaked} neighbour secrets in them" if r.overread_bytes else
                "stopped by a machine check before it returned anything")
    table.add_row("Heartbleed over-read", overread)
    table.add_row("reads of neighbours' secret addresses",
                  f"{r.peeks:,} tried, {r.peeks_leaked} returned the secret, "
                  f"{r.peek_bytes_matching:.1%} of bytes matched (chance: 0.4%); control: "
                  f"own secret {'read back' if r.control_peek_works else 'NOT read'}")
    table.add_row("writes to neighbours' secrets",
                  f"{r.pokes:,} tried, {r.victims_silently_changed} victims' secrets changed")
    if r.backend == "tme":
        table.add_row("machine checks (integrity)", f"{r.machine_checks:,}")
        table.add_row("host reading the raw pool (DRAM)",
                      f"{r.dram_secrets_visible} secrets visible: ciphertext only")
    table.add_row("host API calls from the tenants",
                  f"{r.host_calls:,} (host_audit(), one per answer; docs/embedding.md)")
    table.add_row("faults contained", f"{r.faults_contained} (every other tenant kept running)")
    verdict = "[green]isolated[/]" if r.safe else "[red]ISOLATION FAILED[/]"
    table.add_row("verdict", verdict)
    Console().print(table)
