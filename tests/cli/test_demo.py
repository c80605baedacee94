"""`tmebox demo` end to end, on a small scale, on both backends."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rich.console import Console

from tmebox.demo import DemoResult, demo


def _quiet(**kw) -> DemoResult:
    return demo(console=Console(quiet=True), seed=1, **kw)


def test_native_demo_contains_the_heartbleed_tenant(sandbox_libc):
    r = _quiet(tenants=20, requests=200)
    assert r.tenants == 20 and r.requests == 200
    assert r.control_peek_works, "the attack primitive itself must work on the attacker's memory"
    assert r.overread_bytes == 64 << 10
    assert r.secrets_leaked == 0
    assert r.peeks == 18 and r.peeks_leaked == 0
    assert r.pokes == 18 and r.victims_silently_changed == 0
    assert r.faults_contained == 1
    # Every answer was reported through the host API: the requests, one check per attacked
    # neighbour, and the bystander's check at the end.
    assert r.host_calls == 200 + r.peeks + 1
    assert 0 < r.bytes_per_tenant < 1 << 20
    assert r.safe


def test_tme_demo_reads_only_garbage_and_ciphertext(sandbox_libc):
    r = _quiet(tenants=12, requests=100, backend="tme")
    assert r.control_peek_works
    assert r.peeks_leaked == 0 and r.secrets_leaked == 0
    # Decrypted with the wrong key: about 1 byte in 256 matches by chance, not the secret.
    assert r.peek_bytes_matching < 0.05
    # The over-read reaches the shared pool: it returns (garbage) bytes, not zeros.
    assert r.overread_nonzero > r.overread_bytes // 2
    assert r.dram_secrets_visible == 0
    # Without integrity TME-MK cannot stop a write: the victims' secrets turn to garbage.
    assert r.victims_silently_changed == r.pokes
    assert r.safe


def test_tme_integrity_turns_tampering_into_machine_checks(sandbox_libc):
    r = _quiet(tenants=6, requests=50, backend="tme", integrity=True)
    assert r.victims_silently_changed == 0
    assert r.machine_checks >= r.pokes
    assert r.peeks_leaked == 0 and r.safe


def test_integrity_without_tme_is_an_error():
    out = subprocess.run([sys.executable, "-m", "tmebox.cli", "demo", "--integrity"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "--integrity needs --backend tme" in out.stderr


def test_demo_cli_exit_status_and_summary(sandbox_libc):
    out = subprocess.run([sys.executable, "-m", "tmebox.cli", "demo", "--tenants", "5",
                          "--requests", "20"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "tenants in one process" in out.stdout
    assert "isolated" in out.stdout


@pytest.mark.parametrize("flag,value", [("--tenants", "2"), ("--requests", "0")])
def test_demo_rejects_bad_sizes(flag, value):
    out = subprocess.run([sys.executable, "-m", "tmebox.cli", "demo", flag, value],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"{flag} must be at least" in out.stderr


def test_verdict_fails_on_any_leak_or_broken_control():
    good = dict(backend="native", integrity=False, tenants=3, requests=1, calls_per_second=1.0,
                bytes_per_tenant=1.0, overread_bytes=1, overread_nonzero=1, secrets_leaked=0,
                control_peek_works=True, peeks=1, peeks_leaked=0, peek_bytes_matching=0.0,
                pokes=1, victims_silently_changed=0, machine_checks=0, dram_secrets_visible=0,
                faults_contained=1)
    assert DemoResult(**good).safe
    for bad in ({"secrets_leaked": 1}, {"peeks_leaked": 1}, {"dram_secrets_visible": 1},
                {"control_peek_works": False}, {"victims_silently_changed": 1},
                {"backend": "tme", "integrity": True, "victims_silently_changed": 1}):
        assert not DemoResult(**{**good, **bad}).safe, bad
    assert DemoResult(**{**good, "backend": "tme", "victims_silently_changed": 1}).safe
