"""Architectural state across the native backend's entries and exits (issue 10).

A fresh entry must show the sandbox nothing of the host or of a previous tenant in any
register class the CPU has; every exit must give the host its flags, FPU control words
and signal mask back. The images run unverified (they use x87, AVX, popf).
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest
from asm_image import assemble
from test_native_defence import run_child

from tmebox.runtime import syscalls


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


CPU = _cpu_flags()  # the kernel lists AVX/AVX-512 only if it enabled them (XCR0)
AVX, AVX512 = "avx" in CPU, {"avx512f", "avx512bw"} <= CPU

# dump(buf) layout
GPRS, RFLAGS, FXSAVE, FNSTENV, MMX, YMM_HI, ZMM, KMASK, DUMP_SIZE = (
    0, 128, 256, 768, 800, 896, 1152, 3200, 3264)
GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def _dump_code() -> str:
    lines = [f"    movq %{r}, {8 * i}(%rdi)" for i, r in enumerate(GPR_NAMES)]
    lines += [f"    pushfq\n    popq {RFLAGS}(%rdi)",
              f"    fxsave64 {FXSAVE}(%rdi)", f"    fnstenv {FNSTENV}(%rdi)"]
    lines += [f"    movq %mm{i}, {MMX + 8 * i}(%rdi)" for i in range(8)]
    if AVX:
        lines += [f"    vextractf128 $1, %ymm{i}, {YMM_HI + 16 * i}(%rdi)" for i in range(16)]
    if AVX512:
        lines += [f"    vmovdqu64 %zmm{i}, {ZMM + 64 * i}(%rdi)" for i in range(32)]
        lines += [f"    kmovq %k{i}, {KMASK + 8 * i}(%rdi)" for i in range(8)]
    return "\n".join(lines)


def _taint_code() -> str:
    """Every class set to the 0x41 bytes at (%rdi), an x87 operation with a memory operand
    last (FIP/FDP/FOP), odd control words. (DF and AC: the exit-path test, in a child.)"""
    lines = ["    movq (%rdi), %rax"]
    lines += [f"    movq %rax, %{r}" for r in ("rbx", "rcx", "rdx", "rsi", "rbp", "r8", "r9",
                                               "r10", "r12", "r13", "r15")]
    lines += [f"    movdqu (%rdi), %xmm{i}" for i in range(16)]
    if AVX:
        lines += [f"    vmovdqu (%rdi), %ymm{i}" for i in range(16)]
    if AVX512:
        lines += [f"    vmovdqu64 (%rdi), %zmm{i}" for i in range(32)]
        lines += [f"    kmovq %rax, %k{i}" for i in range(8)]
    lines += ["    fldl (%rdi)"] * 8  # all eight data registers, the stack left full
    lines += ["    movl $0x6f80, 64(%rdi)", "    ldmxcsr 64(%rdi)",  # round to zero
              "    movw $0x0c7f, 64(%rdi)", "    fldcw 64(%rdi)",
              "    xorl %eax, %eax"]
    return "\n".join(lines)


STATE = f"""
    .globl main
main:
    ret

    .globl dump
dump:
{_dump_code()}
    xorl %eax, %eax
    ret

    .globl taint
taint:
{_taint_code()}
    ret

    .globl x87_mem              # an x87 instruction with a memory operand, nothing else
x87_mem:
    fldl (%rdi)
    fstp %st(0)
    xorl %eax, %eax
    ret

    .globl x87_across_rtcall    # fnstenv after a runtime call made after an x87 operation
x87_across_rtcall:
    pushq %rdi
    fldl (%rdi)
    .globl x87_site
x87_site:
    fstp %st(0)
    movl $39, %eax
    rtcall
    popq %rdi
    fnstenv {FNSTENV}(%rdi)
    fxsave64 {FXSAVE}(%rdi)
    ret
"""


@pytest.fixture
def state_img(rt):
    return rt.load_unverified(assemble(STATE))


def _host_x87() -> None:
    """Run an x87 instruction in the host (glibc's expl is x87 code)."""
    libm = ctypes.CDLL("libm.so.6")
    libm.expl.restype = ctypes.c_longdouble
    libm.expl.argtypes = [ctypes.c_longdouble]
    assert 2.7 < float(libm.expl(1.0)) < 2.8


def _dump(sb) -> tuple[int, bytes]:
    buf = sb.alloc(8192)
    assert sb.call("dump", buf) == 0
    return buf, sb.memory.read(buf, DUMP_SIZE)


def _check_clean(sb, buf: int, d: bytes) -> None:
    gpr = dict(zip(GPR_NAMES, struct.unpack_from("<16Q", d, GPRS), strict=True))
    expected = dict.fromkeys(GPR_NAMES, 0)
    expected.update(rdi=buf, rsp=sb._call_rsp - 8, r14=sb.base, r10=sb._lookup("dump"),
                    r11=sb._ret - 3)  # the host calls through `call *%r10` at 0x1d
    assert gpr == expected
    assert struct.unpack_from("<Q", d, RFLAGS)[0] == 0x246  # IF, ZF, PF; no DF, AC, TF
    fcw, fsw, ftw, fop, fip, fdp, mxcsr = struct.unpack_from("<HHBxHQQI", d, FXSAVE)
    assert (fcw, fsw, ftw, fop, fip, fdp, mxcsr) == (0x37F, 0, 0, 0, 0, 0, 0x1F80)
    for i in range(8):  # x87 data registers: mantissa zero (MMX writes set the exponent)
        st = d[FXSAVE + 32 + 16 * i:FXSAVE + 42 + 16 * i]
        assert st[:8] == bytes(8) and st[8:] in (b"\0\0", b"\xff\xff"), (i, st.hex())
    assert d[FXSAVE + 160:FXSAVE + 416] == bytes(256)  # xmm0-15
    env = struct.unpack_from("<7I", d, FNSTENV)
    assert env[0] & 0xFFFF == 0x37F and env[1] & 0xFFFF == 0
    assert env[2] & 0xFFFF == 0xFFFF  # all tags empty
    # FIP, FCS and FOP, FDP, FDS (the upper bits are reserved)
    fip, fcs_fop, fdp, fds = env[3:]
    assert (fip, fcs_fop & 0x07FF_FFFF, fdp, fds & 0xFFFF) == (0, 0, 0, 0), [hex(x) for x in env]
    assert d[MMX:MMX + 64] == bytes(64)
    if AVX:
        assert d[YMM_HI:YMM_HI + 256] == bytes(256)
    if AVX512:
        assert d[ZMM:ZMM + 2048] == bytes(2048)
        assert d[KMASK:KMASK + 64] == bytes(64)


def test_fresh_entry_after_a_tainting_tenant_and_host_x87_is_clean(rt, state_img):
    a, b = rt.spawn(state_img), rt.spawn(state_img)
    buf = a.alloc(4096)
    a.memory.write(buf, b"\x41" * 128)
    a.call("taint", buf)
    buf, d = _dump(b)
    _check_clean(b, buf, d)  # nothing of tenant a
    a.call("taint", a.alloc(4096))
    _host_x87()
    buf, d = _dump(b)
    _check_clean(b, buf, d)  # nothing of the host's expl
    buf, d = _dump(a)
    _check_clean(a, buf, d)  # nor of a's own previous call


def test_x87_pointers_of_one_tenant_do_not_reach_the_next(rt, state_img):
    """Finding 3: fnstenv showed the previous tenant's FIP, FDP and FOP."""
    a, b = rt.spawn(state_img), rt.spawn(state_img)
    p = a.alloc(4096)
    a.memory.write(p, struct.pack("<d", 1.5))
    a.call("x87_mem", p)
    buf, d = _dump(b)
    fip, fcs_fop, fdp = struct.unpack_from("<3I", d, FNSTENV + 12)
    assert (fip, fcs_fop >> 16 & 0x7FF, fdp) == (0, 0, 0)


def test_resume_after_a_runtime_call_shows_no_host_x87_pointer(rt, state_img, monkeypatch):
    """fxrstor on AMD CPUs without XSaveErPtr keeps the current (host's) FIP/FDP/FOP; the
    resume runs fninit first. This CPU's fxrstor restores them, so here this only guards."""
    real = syscalls.handle

    def handle(*args):
        _host_x87()  # the host's own x87 code runs while the sandbox waits
        return real(*args)

    monkeypatch.setattr(syscalls, "handle", handle)
    sb = rt.spawn(state_img)
    buf = sb.alloc(8192)
    sb.memory.write(buf, struct.pack("<d", 1.5))
    assert sb.call("x87_across_rtcall", buf) == 1
    d = sb.memory.read(buf, DUMP_SIZE)
    fip, fdp = struct.unpack_from("<I4xI", d, FNSTENV + 12)
    site = sb._lookup("x87_site") & 0xFFFF_FFFF
    assert fip in (0, site) and fdp in (0, buf & 0xFFFF_FFFF), (hex(fip), hex(fdp))
    assert struct.unpack_from("<QQ", d, FXSAVE + 8) in ((0, 0), (sb._lookup("x87_site"), buf))


# -- the host's state after every exit path --------------------------------------------------

DIRTY = r"""
    .globl main
main:
    ret
    .macro dirty                # DF, AC, round-to-zero + FTZ, x87 round-to-zero
    std
    pushfq
    orl $0x40000, (%rsp)
    popfq
    movl $0xff80, -64(%rsp)
    ldmxcsr -64(%rsp)
    movw $0x0c7f, -64(%rsp)
    fldcw -64(%rsp)
    .endm

    .globl dirty_ret
dirty_ret:
    dirty
    ret

    .globl dirty_rtcall
dirty_rtcall:
    dirty
    movl $39, %eax
    rtcall
    ret

    .globl dirty_fault
dirty_fault:
    dirty
    ud2

    .globl dirty_spin
dirty_spin:
    dirty
1:  jmp 1b
"""

HOST_STATE = """
    pushfq
    popq %rax
    movq %rax, (%rdi)
    stmxcsr 8(%rdi)
    fnstcw 12(%rdi)
    ret
"""


def test_every_exit_path_gives_the_host_its_state_back():
    out = run_child(f"""
        import ctypes, mmap, signal, threading, time
        from tmebox.errors import SandboxFault, SandboxTimeout
        from tmebox.runtime import syscalls

        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(machine_code({HOST_STATE!r}))
        read_state = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(
            ctypes.addressof(ctypes.c_char.from_buffer(page)))

        def state():
            out = (ctypes.c_uint32 * 4)()
            read_state(ctypes.addressof(out))
            flags = out[0] & (0x40000 | 0x400 | 0x100)  # AC, DF, TF
            # The signal mask comes back lazily: by the thread's next service tick (~1 ms).
            time.sleep(0.01)
            return flags, out[2], out[3] & 0xffff, signal.pthread_sigmask(signal.SIG_BLOCK, [])

        host = state()
        seen = {{}}
        real = syscalls.handle

        def handle(*args):
            seen["runtime call"] = state()
            return real(*args)

        syscalls.handle = handle
        with tmebox.Runtime(backend="native") as rt:
            img = rt.load_unverified(assemble({DIRTY!r}))
            rt.spawn(img).call("dirty_ret")
            seen["return"] = state()
            rt.spawn(img).call("dirty_rtcall")
            seen["after the runtime call"] = state()
            try:
                rt.spawn(img).call("dirty_fault")
            except SandboxFault:
                seen["fault"] = state()
            try:
                rt.spawn(img, timeout=0.1).call("dirty_spin")
            except SandboxTimeout:
                seen["timeout"] = state()
            timer = threading.Timer(0.2, signal.pthread_kill,
                                    (threading.get_ident(), signal.SIGINT))
            timer.start()
            try:
                rt.spawn(img).call("dirty_spin")
            except KeyboardInterrupt:
                seen["interrupt"] = state()
        for path, s in seen.items():
            print(path, "ok" if s == host else f"{{s}} != {{host}}")
    """)
    assert out.splitlines() == [f"{path} ok" for path in (
        "runtime call", "return", "after the runtime call", "fault", "timeout", "interrupt")]
