"""Environment by capability and sleeping inside a sandbox, on both backends (docs/runtime.md,
"Environment and time")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from c_image import build_c

import tmebox
from tmebox.errors import SandboxTimeout

SRC = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *v = getenv(argv[i]);
        printf("%s=%s\n", argv[i], v ? v : "(unset)");
    }
    return 0;
}
long nap_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    return nanosleep(&t, 0) ? -errno : 0;
}
long nap_until(long ms) {   /* clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) */
    struct timespec now, t;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ns = now.tv_nsec + (ms % 1000) * 1000000L;
    t.tv_sec = now.tv_sec + ms / 1000 + ns / 1000000000L;
    t.tv_nsec = ns % 1000000000L;
    return -clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, 0);
}
long raw_nanosleep(long sec, long nsec, long bad_pointer) {
    struct timespec t = {sec, nsec};
    return syscall(SYS_nanosleep, bad_pointer ? (void *)0xfffff000u : (void *)&t, 0) ? -errno : 0;
}
"""
BACKENDS = ["native", "tme"]


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    return build_c(tmp_path_factory, "env", SRC)


def _printed(rt: tmebox.Runtime, image: Path, names: list[str], **kw) -> list[str]:
    out = bytearray()
    sb = rt.spawn(rt.load(image), argv=["env", *names], stdout=out, **kw)
    assert sb.run() == 0
    return out.decode().splitlines()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_environment_is_what_the_host_gives(image, backend, monkeypatch) -> None:
    monkeypatch.setenv("TMEBOX_TEST_SECRET", "host only")
    with tmebox.Runtime(backend=backend) as rt:
        assert _printed(rt, image, ["K", "TMEBOX_TEST_SECRET"], env={"K": "v=1"}) == [
            "K=v=1", "TMEBOX_TEST_SECRET=(unset)"]  # nothing of the host's leaks
        assert _printed(rt, image, ["TMEBOX_TEST_SECRET"]) == ["TMEBOX_TEST_SECRET=(unset)"]
        assert _printed(rt, image, ["TMEBOX_TEST_SECRET"], env=os.environ) == [
            "TMEBOX_TEST_SECRET=host only"]
        img, alive = rt.load(image), rt.sandboxes
        with pytest.raises(TypeError, match="env or envp, not both"):
            rt.spawn(img, env={"A": "1"}, envp=["B=2"])
        for bad in ({"": "x"}, {"A=B": "x"}, {"A": "x\0y"}):
            with pytest.raises(ValueError, match="non-empty without '='"):
                rt.spawn(img, env=bad)
        with pytest.raises(TypeError, match="must be str"):
            rt.spawn(img, env={"A": 1})
        assert rt.sandboxes == alive  # a refused spawn leaves nothing behind


@pytest.mark.parametrize("backend", BACKENDS)
def test_sleeps_sleep(image, backend) -> None:
    with tmebox.Runtime(backend=backend) as rt:
        sb = rt.spawn(rt.load(image))
        for fn in ("nap_ms", "nap_until"):
            t = time.monotonic()
            assert sb.call(fn, 60) == 0
            assert time.monotonic() - t >= 0.059, fn
        assert sb.call("raw_nanosleep", 0, 1_000_000_000, 0) == -22  # EINVAL: nsec too big
        assert sb.call("raw_nanosleep", -1, 0, 0) == -22
        assert sb.call("raw_nanosleep", 0, 0, 1) == -14  # EFAULT: not the sandbox's memory


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_timeout_counts_time_asleep(image, backend) -> None:
    with tmebox.Runtime(backend=backend) as rt:
        sb = rt.spawn(rt.load(image), timeout=0.3)
        t = time.monotonic()
        with pytest.raises(SandboxTimeout):
            sb.call("nap_ms", 5000)
        assert 0.25 < time.monotonic() - t < 2.0


def test_tmebox_run_env_options(image, tmp_path) -> None:
    env = dict(os.environ, TMEBOX_TEST_SECRET="host only")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tmebox.cli", "run", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    r = run("--env", "A=1", str(image), "A", "TMEBOX_TEST_SECRET", "--env", "B=2", "B")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["A=1", "TMEBOX_TEST_SECRET=(unset)", "B=2"]
    r = run("--inherit-env", "--env", "TMEBOX_TEST_SECRET=mine", str(image),
            "TMEBOX_TEST_SECRET")
    assert r.stdout.splitlines() == ["TMEBOX_TEST_SECRET=mine"]
    r = run(str(image), "--env", "=x")
    assert r.returncode == 2 and "must be K=V with a non-empty K" in r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_per_call(image, backend) -> None:
    with tmebox.Runtime(backend=backend) as rt:
        img = rt.load(image)
        sb = rt.spawn(img)
        for _ in range(3):  # the first call takes the Python path, later ones (native) C
            assert sb.call("nap_ms", 5, timeout=0.5) == 0
        time.sleep(0.6)  # past that limit: it must not apply to calls without one
        assert sb.call("nap_ms", 5) == 0 and sb.call("nap_ms", 5) == 0
        sb.timeout = 0.5
        assert sb.call("nap_ms", 5) == 0
        sb.timeout = None
        time.sleep(0.6)
        assert sb.call("nap_ms", 5) == 0 and sb.call("nap_ms", 5) == 0
        t = time.monotonic()
        with pytest.raises(SandboxTimeout, match="longer than 0.2 s"):
            sb.call("nap_ms", 5000, timeout=0.2)
        assert time.monotonic() - t < 2.0 and sb.state == "dead"
        other = rt.spawn(img, timeout=10)
        with pytest.raises(SandboxTimeout):  # the call's limit, not the sandbox's
            other.call("nap_ms", 5000, timeout=0.2)
        for bad in (0, -1, float("inf"), float("nan"), True, "1"):
            with pytest.raises(ValueError, match="positive number of seconds"):
                rt.spawn(img).call("nap_ms", 1, timeout=bad)
