"""Real images from `tmebox cc` (C + the sandbox musl) on the native backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tmebox.errors import SandboxExited, SandboxFault, SandboxTimeout, VerificationError

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tenant_box(tmp_path_factory) -> Path:
    from tmebox.toolchain import cc

    out = tmp_path_factory.mktemp("img") / "tenant.box"
    cc.build(sources=[HERE / "c" / "tenant.c"], output=out, isolation="code+data")
    return out


def test_main_sees_argv_stdin_and_libc_works(rt, tenant_box):
    img = rt.load(tenant_box)
    out, err = bytearray(), bytearray()
    sb = rt.spawn(img, argv=["tenant", "a b", "c"], stdin=b"the quick brown fox\n", stdout=out,
                  stderr=err, timeout=10)
    assert sb.run() == 7
    assert out.decode().splitlines() == ["argc=3 [tenant] [a b] [c]", "vowels=5"]
    assert err == b"to stderr\n"


def test_exports_with_buffers(rt, tenant_box):
    sb = rt.spawn(rt.load(tenant_box), timeout=10)
    buf = sb.alloc(4096)
    sb.memory.write(buf, b"Education")
    assert sb.call("count_vowels", buf, 9) == 5
    assert sb.call("heap_churn", 20) == 60
    assert sb.call("uses_time_and_random") == 0
    assert sb.call("divide", 84, 2) == 42


@pytest.mark.parametrize("func, args, kind", [
    ("null_write", (1,), "segv"),
    ("recurse", (0,), "stack-overflow"),
    ("divide", (1, 0), "divide-error"),
])
def test_c_faults_are_contained(rt, tenant_box, func, args, kind):
    img = rt.load(tenant_box)
    victim, bystander = rt.spawn(img), rt.spawn(img)
    with pytest.raises(SandboxFault) as e:
        victim.call(func, *args)
    assert e.value.kind == kind
    buf = bystander.alloc(16)
    bystander.memory.write(buf, b"aei")
    assert bystander.call("count_vowels", buf, 3) == 3


def test_abort_and_timeout(rt, tenant_box):
    img = rt.load(tenant_box)
    with pytest.raises(SandboxExited, match="status 134"):
        rt.spawn(img).call("do_abort")
    sb = rt.spawn(img, timeout=0.3)
    t = time.monotonic()
    with pytest.raises(SandboxTimeout):
        sb.call("spin", 1)
    assert time.monotonic() - t < 5


def test_a_tampered_image_is_refused_before_mapping(rt, tenant_box, tmp_path):
    from elftools.elf.elffile import ELFFile

    from tmebox.trusted.image import Image

    image = Image.load(tenant_box)
    data = bytearray(tenant_box.read_bytes())
    with tenant_box.open("rb") as f:
        code_seg = next(s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD")
    # a `syscall` (0f 05) planted at main: the verifier must reject it
    code_file_offset = code_seg["p_offset"] + image.exports["main"]
    data[code_file_offset:code_file_offset + 2] = b"\x0f\x05"
    bad = tmp_path / "bad.box"
    bad.write_bytes(bytes(data))
    n = rt.sandboxes
    with pytest.raises(VerificationError):
        rt.load(bad)
    assert rt.sandboxes == n
