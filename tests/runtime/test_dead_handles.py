"""Issue 10, finding 4: after destroy() or Runtime.close() a sandbox handle is dead.

Before the fix `Sandbox.memory` kept working after destroy(): on the native backend a
warm window is handed to the next tenant of the same image, so a saved `memory` (or a
late `free()`) read, wrote or zeroed that tenant's bytes; after Runtime.close() the
window is PROT_NONE and the same read killed the host with SIGSEGV.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from programs import BASIC, basic

import tmebox
from tmebox.errors import RuntimeClosed, SandboxDestroyed, TmeboxError
from tmebox.runtime.api import Sandbox
from tmebox.runtime.memory import GuardedMemory

MASK = 0xFFFF_FFFF
SECRET = b"next tenant's secret"
TME_OPTIONS = {"pool_size": 64 << 20, "heap_size": 1 << 20, "resident_pages": 2048}


def _runtime(backend: str) -> tmebox.Runtime:
    options = TME_OPTIONS if backend == "tme" else {}
    return tmebox.Runtime(backend=backend, max_sandboxes=8, **options)


@pytest.fixture(params=["native", "tme"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def rt(backend):
    with _runtime(backend) as runtime:
        yield runtime


@pytest.fixture
def img(rt):
    return rt.load_unverified(basic())


def _dead_uses(sb: Sandbox, mem: GuardedMemory, p: int,
               other: Sandbox) -> dict[str, Callable[[], object]]:
    """One use of every public method of a Sandbox and of its memory."""
    return {
        "call": lambda: sb.call("neg"),
        "call (never called before)": lambda: sb.call("args6", 1, 2),
        "run": lambda: sb.run(),
        "alloc": lambda: sb.alloc(64),
        "free": lambda: sb.free(p, 64),
        "transfer": lambda: sb.transfer(p, 64, to=other),
        "memory.read": lambda: mem.read(p, 8),
        "memory.write": lambda: mem.write(p, b"x" * 8),
        "memory.read_u64": lambda: mem.read_u64(p),
        "memory.write_u64": lambda: mem.write_u64(p, 1),
        "memory.ok": lambda: mem.ok(p, 8, False),
        "symbol": lambda: sb.symbol("anything"),
        "snapshot": lambda: sb.snapshot(),
        "reset": lambda: sb.reset(),
        "memory.read_cstring": lambda: mem.read_cstring(p),
        "memory.write_cstring": lambda: mem.write_cstring(p, "x"),
        "memory.view": lambda: mem.view(p, 8),
    }


def test_every_method_of_a_destroyed_sandbox_raises(rt, img):
    sb, other = rt.spawn(img), rt.spawn(img)
    mem = sb.memory  # saved before destroy, as an embedder would
    p = sb.alloc(64)
    mem.write(p, b"before!!")
    before = mem.read(p, 8)
    sb.destroy()
    uses = _dead_uses(sb, mem, p, other)
    for what, use in uses.items():
        with pytest.raises(SandboxDestroyed, match=r"basic \(sandbox at 0x[0-9a-f]+\).*"
                                                   r"destroyed") as e:
            use()
        assert isinstance(e.value, TmeboxError), what
    with pytest.raises(SandboxDestroyed):
        sb._engine.memory.read(p, 8)  # the runtime's own accessor is closed as well
    assert before == b"before!!"  # what was read earlier is a copy, not a view of the window
    sb.destroy()  # destroy() alone may be repeated
    assert other.call("neg") == -5 and rt.sandboxes == 1


def test_the_dead_uses_cover_every_public_method():
    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}

    names = {k.split(" ")[0] for k in _dead_uses(None, None, 0, None)}  # type: ignore[arg-type]
    # destroy() may be repeated; interrupt() races with destroy() from other threads by
    # design and then has nothing to do (test_interrupt.py)
    assert public(Sandbox) - {"destroy", "interrupt"} == {n for n in names if "." not in n}
    assert {f"memory.{n}" for n in public(GuardedMemory)} == {n for n in names if "." in n}


def test_a_saved_memory_never_reaches_the_next_tenant_of_the_window(rt, img):
    a = rt.spawn(img)
    mem = a.memory
    p = a.alloc(4096)
    a.destroy()
    b = rt.spawn(img)
    assert b.base == a.base  # the same window (native: kept warm; tme: the same KeyID)
    q = b.alloc(4096)
    assert q & MASK == p & MASK  # and the same buffer in it
    b.memory.write(q, SECRET)
    with pytest.raises(SandboxDestroyed):
        mem.read(p, len(SECRET))
    with pytest.raises(SandboxDestroyed):
        mem.write(p, b"forged")
    with pytest.raises(SandboxDestroyed):
        a.free(p, 4096)  # native: would have zeroed b's page
    assert b.memory.read(q, len(SECRET)) == SECRET


def test_an_access_waiting_on_the_lock_sees_the_destroy(rt, img):
    """A host write blocked behind destroy() (same lock) must not land once it gets in."""
    sb = rt.spawn(img)
    mem, p = sb.memory, sb.alloc(64)
    engine = sb._engine
    destroying, writer_waits = threading.Event(), threading.Event()
    real_destroy = engine.destroy

    def slow_destroy() -> None:  # holds the sandbox lock while the writer queues up
        destroying.set()
        assert writer_waits.wait(5)
        time.sleep(0.1)
        real_destroy()

    engine.destroy = slow_destroy
    killer = threading.Thread(target=sb.destroy)
    killer.start()
    assert destroying.wait(5)
    outcome: list[BaseException | None] = []

    def write() -> None:
        writer_waits.set()
        try:
            mem.write(p, SECRET)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - the outcome is what is checked
            outcome.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    killer.join(10)
    writer.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], SandboxDestroyed), outcome
    heir = rt.spawn(img)
    assert heir.base == sb.base
    assert heir.memory.read(heir.alloc(64), len(SECRET)) == bytes(len(SECRET))


def test_transfer_to_a_destroyed_sandbox_is_refused():
    with _runtime("tme") as rt:
        img = rt.load_unverified(basic())
        a, b = rt.spawn(img), rt.spawn(img)
        p = a.alloc(64)
        b.destroy()
        with pytest.raises(SandboxDestroyed, match="receiving"):
            a.transfer(p, 64, to=b)
        with pytest.raises(TmeboxError, match="itself"):
            a.transfer(p, 64, to=a)


CLOSED = """
import sys
sys.path.insert(0, {tests!r})
from asm_image import assemble
import tmebox
from tmebox.errors import RuntimeClosed, SandboxDestroyed

rt = tmebox.Runtime(backend={backend!r}, max_sandboxes=4, **{options!r})
img = rt.load_unverified(assemble({body!r}))
sb = rt.spawn(img)
mem, p = sb.memory, sb.alloc(4096)
mem.write(p, b"x")
rt.close()
for use in (lambda: mem.read(p, 1), lambda: mem.write(p, b"y"), lambda: sb.call("neg"),
            sb.run, lambda: sb.alloc(64)):
    try:
        use()
    except SandboxDestroyed as e:
        assert "Runtime was closed" in str(e), e
    else:
        raise SystemExit("a dead handle worked")
for use in (lambda: rt.spawn(img), lambda: img.prepared, lambda: rt.load_unverified(img.plan)):
    try:
        use()
    except RuntimeClosed:
        pass
    else:
        raise SystemExit("a closed Runtime worked")
print("all refused")
"""


def test_handles_of_a_closed_runtime_raise_instead_of_crashing(backend):
    """In a child: before the fix the first read segfaulted the whole process."""
    options = TME_OPTIONS if backend == "tme" else {}
    script = CLOSED.format(tests=str(Path(__file__).parent), backend=backend,
                           options=options, body=BASIC)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == "all refused"


def test_a_loaded_image_of_a_closed_runtime_raises(backend):
    rt = _runtime(backend)
    img = rt.load_unverified(basic())
    rt.close()
    with pytest.raises(RuntimeClosed, match="released"):
        img.prepared  # noqa: B018
    with pytest.raises(RuntimeClosed):
        rt.spawn(img)
    rt.close()  # a second close does nothing
