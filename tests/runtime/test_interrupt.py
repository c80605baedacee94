"""Sandbox.interrupt() from another thread, on both backends: a spinning call, a sleep, a
blocked read of the host's stdin; and that no other sandbox is ever hit (docs/runtime.md,
"Interruption")."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from c_image import build_c

import tmebox
from tmebox.errors import SandboxError, SandboxInterrupted, SandboxTimeout

SRC = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000L + t.tv_nsec / 1000;
}
long spin(void) { for (volatile long i = 0;; i++) {} }
long spin_us(long us) {          /* busy for us microseconds, runtime calls included */
    long end = now_us() + us;
    while (now_us() < end) {}
    return us;
}
long nap_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    return nanosleep(&t, 0);
}
long read_stdin(void) { char c; return read(0, &c, 1); }
long add(long a, long b) { return a + b; }
int main(void) {
    char line[64];
    if (fgets(line, sizeof line, stdin)) printf("got %s", line);
    return 0;
}
"""
BACKENDS = ["native", "tme"]


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    return build_c(tmp_path_factory, "intr", SRC)


@pytest.fixture(params=BACKENDS)
def rt(request):
    with tmebox.Runtime(backend=request.param, max_sandboxes=64) as runtime:
        yield runtime


def interrupt_after(sb, seconds: float) -> threading.Thread:
    t = threading.Timer(seconds, sb.interrupt)
    t.start()
    return t


@pytest.mark.parametrize("fn,args", [("spin", ()), ("nap_ms", (30_000,))])
def test_interrupt_ends_a_running_call_at_once(rt, image, fn, args):
    sb = rt.spawn(rt.load(image))
    other = rt.spawn(rt.load(image))
    t0 = time.monotonic()
    timer = interrupt_after(sb, 0.2)
    with pytest.raises(SandboxInterrupted, match="interrupted"):
        sb.call(fn, *args)
    timer.join()
    assert 0.19 <= time.monotonic() - t0 < 5
    assert sb.state == "dead"
    with pytest.raises(SandboxError, match="faulted or timed out"):
        sb.call("add", 1, 2)
    assert other.call("add", 2, 3) == 5  # another sandbox is not touched


def test_an_interrupt_with_no_call_running_ends_the_next_one(rt, image):
    sb = rt.spawn(rt.load(image))
    assert sb.call("add", 1, 1) == 2
    sb.interrupt()
    t0 = time.monotonic()
    with pytest.raises(SandboxInterrupted):
        sb.call("spin")
    assert time.monotonic() - t0 < 2
    sb.destroy()
    sb.interrupt()  # after destroy: nothing to do, no error


def test_interrupt_is_not_a_timeout(rt, image):
    sb = rt.spawn(rt.load(image), timeout=60)
    timer = interrupt_after(sb, 0.1)
    with pytest.raises(SandboxInterrupted) as e:
        sb.call("spin")
    timer.join()
    assert not isinstance(e.value, SandboxTimeout)


def test_interrupts_never_hit_another_sandbox_on_the_same_thread(image):
    """A worker alternates between tenants that get interrupted and one that must never be;
    the interrupts land at random moments, also just as the worker switches."""
    with tmebox.Runtime(max_sandboxes=64) as rt:
        img = rt.load(image)
        victims = [rt.spawn(img) for _ in range(40)]
        bystander = rt.spawn(img)
        outcomes: list[str] = []

        def worker() -> None:
            for v in victims:
                try:
                    v.call("spin_us", 3000)
                    outcomes.append("done")
                except SandboxInterrupted:
                    outcomes.append("interrupted")
                for _ in range(20):
                    assert bystander.call("spin_us", 50) == 50

        t = threading.Thread(target=worker)
        t.start()
        rng = random.Random(7)
        for v in victims:
            time.sleep(rng.uniform(0, 0.004))
            v.interrupt()
        t.join()
        assert bystander.state == "parked" and bystander.call("add", 1, 2) == 3
        assert len(outcomes) == 40 and "interrupted" in outcomes


BLOCKED_READ = r"""
import sys, threading, time, tmebox
from tmebox.errors import SandboxInterrupted, SandboxTimeout
how, backend, image = sys.argv[1:]
with tmebox.Runtime(backend=backend) as rt:
    sb = rt.spawn(rt.load(image), timeout=0.5 if how == "timeout" else None)
    if how == "interrupt":
        threading.Timer(0.3, sb.interrupt).start()
    t0 = time.monotonic()
    try:
        sb.call("read_stdin")
    except (SandboxInterrupted, SandboxTimeout) as e:
        print(type(e).__name__, round(time.monotonic() - t0, 1))
"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["interrupt", "timeout"])
def test_a_read_blocked_on_the_hosts_stdin_ends(image, backend, how):
    r, w = os.pipe()  # never written: the guest's read blocks until it is ended
    try:
        p = subprocess.run([sys.executable, "-c", BLOCKED_READ, how, backend, str(image)],
                           stdin=r, capture_output=True, text=True, timeout=60)
    finally:
        os.close(r)
        os.close(w)
    name, seconds = p.stdout.split()
    assert name == ("SandboxInterrupted" if how == "interrupt" else "SandboxTimeout"), p.stderr
    assert float(seconds) < 3


def test_tmebox_run_times_out_a_program_waiting_for_stdin(image):
    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "tmebox.cli", "run", str(image),
                            "--timeout", "0.5"], stdin=r, capture_output=True, text=True,
                           timeout=60)
    finally:
        os.close(r)
        os.close(w)
    assert p.returncode == 1 and "longer than 0.5 s" in p.stderr, p.stderr
    assert time.monotonic() - t0 < 10


def test_a_flood_of_interrupts_queues_one_signal(image):
    """interrupt() in a loop: only the first one signals (the flag stays set), so the
    user's queue of real-time signals is not spent and the thread is not drowned."""
    with tmebox.Runtime() as rt:
        sb = rt.spawn(rt.load(image))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                sb.call("spin")
            except BaseException as e:  # noqa: BLE001 - what ended the call is the result
                errors.append(e)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.05)
        for _ in range(20000):
            sb.interrupt()
        queued = int(next(line.split()[1].split("/")[0]
                          for line in Path("/proc/self/status").read_text().splitlines()
                          if line.startswith("SigQ:")))
        t.join(10)
        assert not t.is_alive() and isinstance(errors[0], SandboxInterrupted)
        assert queued <= 50  # the user's whole queue (timers too); 20,000 before the fix
