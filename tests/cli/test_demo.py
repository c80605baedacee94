"""`tmebox demo` end to end, on a small scale."""

from __future__ import annotations

import subprocess
import sys

from rich.console import Console

from tmebox.demo import demo


def test_demo_contains_the_heartbleed_tenant(sandbox_libc):
    r = demo(tenants=20, requests=200, console=Console(quiet=True), seed=1)
    assert r.tenants == 20 and r.requests == 200
    assert r.control_peek_works, "the attack primitive itself must work on the attacker's memory"
    assert r.own_bytes_leaked > 0, "the over-read must really read past the payload"
    assert r.secrets_leaked == 0
    assert r.peeks == 19 and r.peeks_leaked == 0
    assert r.pokes == 19 and r.victims_corrupted == 0
    assert r.faults_contained == 1
    assert 0 < r.bytes_per_tenant < 1 << 20


def test_demo_cli_exit_status_and_summary(sandbox_libc):
    out = subprocess.run([sys.executable, "-m", "tmebox.cli", "demo", "--tenants", "5",
                          "--requests", "20"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "tenants in one process" in out.stdout
    assert "0 neighbours corrupted" in out.stdout


def test_demo_rejects_too_few_tenants():
    out = subprocess.run([sys.executable, "-m", "tmebox.cli", "demo", "--tenants", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "--tenants must be at least 2" in out.stderr
