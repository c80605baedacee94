"""Defence in depth in the native runtime (issue 10): what holds when something slipped
past the verifier. The images run unverified (`load_unverified`), as if a verifier hole
let them through; the attacks that would kill the host run in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from asm_image import assemble

from tmebox.runtime import _native
from tmebox.runtime import layout as lay

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def run_child(code: str, timeout: float = 60) -> str:
    """Run code in a fresh interpreter (an escape kills that one, not pytest); its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(HERE)]))
    prelude = "import tmebox\nfrom asm_image import assemble, machine_code\n"
    r = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"child died ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


# -- 1. any synchronous fault of sandbox code ends its call, wherever %rip is -------------

JUMPER = r"""
    .globl main
main:
    ret
    .globl jump             # to %rdi, with %rdi and %r11 non-canonical (host code faults)
jump:
    movq %rdi, %rax
    movabsq $0x8000000000000000, %rdi
    movq %rdi, %r11
    jmpq *%rax

    .globl ok
ok:
    leaq 1(%rdi), %rax
    ret
"""


def test_jumps_out_of_the_window_fault_the_sandbox_not_the_host():
    out = run_child(f"""
        import ctypes
        import capstone
        from elftools.elf.elffile import ELFFile
        from tmebox.errors import SandboxFault
        from tmebox.runtime import _native, layout as lay

        def helper_base():
            for line in lay.read_host_maps():
                if line.endswith(_native.__file__):
                    return int(line.split("-", 1)[0], 16)

        with open(_native.__file__, "rb") as f:
            elf = ELFFile(f)
            syms = {{s.name: s["st_value"] for s in elf.get_section_by_name(".symtab")
                    .iter_symbols()}}
            text = elf.get_section_by_name(".text")
            at = syms["tmebox_rt_exit_entry"] - text["sh_addr"]
            code = text.data()[at:at + 32]
        # past the exit entry's own context load, as if the context were in %r11
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        past_load = [i.address for i in md.disasm(code, syms["tmebox_rt_exit_entry"])][2]
        libc = ctypes.CDLL(None)
        targets = {{
            "unmapped 0x7f0000001000": 0x7F0000001000,
            "low address 0x1234": 0x1234,
            "non-canonical": 0x8000_0000_0000_0000,
            # host code that faults on the sandbox's registers (%rdi non-canonical)
            "libc strlen": ctypes.cast(libc.strlen, ctypes.c_void_p).value,
            # the helper's own entry and fault exit, reached without the host
            "tmebox_enter_asm": helper_base() + syms["tmebox_enter_asm"],
            "tmebox_fault_exit": helper_base() + syms["tmebox_fault_exit"],
            "the middle of an exit path": helper_base() + past_load,
        }}
        with tmebox.Runtime(backend="native") as rt:
            img = rt.load_unverified(assemble({JUMPER!r}))
            for what, target in targets.items():
                sb = rt.spawn(img)
                try:
                    sb.call("jump", target)
                except SandboxFault as e:
                    print(what, "->", e.kind, sb.state)
                else:
                    print(what, "-> returned")
                assert rt.spawn(img).call("ok", 41) == 42
        print("host alive")
    """)
    lines = out.splitlines()
    assert lines[-1] == "host alive"
    assert lines[:-1] == [
        "unmapped 0x7f0000001000 -> segv dead",
        "low address 0x1234 -> segv dead",
        "non-canonical -> segv dead",
        "libc strlen -> segv dead",
        "tmebox_enter_asm -> illegal-instruction dead",
        "tmebox_fault_exit -> segv dead",
        "the middle of an exit path -> segv dead",
    ]


# -- 2. asynchronous host signals wait until the sandbox has left -------------------------

SPINNER = r"""
    .globl main
main:
    ret
    .globl spin
spin:
    jmp spin
"""

# A SIGUSR1 handler that records its stack pointer and counts its calls; installed with
# plain sigaction flags (no SA_ONSTACK), so the kernel puts its frame on whatever stack
# the thread is on when the signal is delivered.
HANDLER = """
    movq %rsp, %rax
    movabsq $0x{slot:x}, %rdx
    movq %rax, (%rdx)
    incq 8(%rdx)
    ret
"""


def test_host_signal_without_sa_onstack_waits_for_the_sandbox_to_leave():
    out = run_child(f"""
        import ctypes, mmap, signal, threading, time
        from tmebox.errors import SandboxTimeout

        slot = (ctypes.c_uint64 * 2)()
        code = machine_code({HANDLER!r}.format(slot=ctypes.addressof(slot)))
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        handler = ctypes.addressof(ctypes.c_char.from_buffer(page))

        class SigAction(ctypes.Structure):  # glibc's struct sigaction
            _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_uint64 * 16),
                        ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]

        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.sigaction(signal.SIGUSR1, ctypes.byref(SigAction(handler=handler)),
                              None) == 0
        with tmebox.Runtime(backend="native") as rt:
            img = rt.load_unverified(assemble({SPINNER!r}))
            sb = rt.spawn(img, timeout=0.6)
            # below the frame the call starts on (a return address, nothing else)
            lo = sb.base + sb._layout.stack_bottom
            n = sb._call_rsp - 16 - lo
            sb.memory.write(lo, b"\\xab" * n)
            main = threading.get_ident()
            threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGUSR1)).start()
            t = time.monotonic()
            try:
                sb.call("spin")
            except SandboxTimeout:
                pass
            assert time.monotonic() - t > 0.5
            # Delivered once the service tick has unblocked it (<= ~1 ms after the call).
            for _ in range(100):
                if slot[1]:
                    break
                time.sleep(0.001)
            print("handler calls", slot[1])
            print("handler stack in window", slot[0] >> 32 == sb.base >> 32)
            print("stack untouched", sb.memory.read(lo, n) == b"\\xab" * n)
    """)
    assert out.splitlines() == ["handler calls 1", "handler stack in window False",
                                "stack untouched True"]


# -- 3. full RELRO -----------------------------------------------------------------------

def test_native_helper_is_linked_with_full_relro():
    from elftools.elf.elffile import ELFFile

    with open(_native.__file__, "rb") as f:
        elf = ELFFile(f)
        assert any(seg["p_type"] == "PT_GNU_RELRO" for seg in elf.iter_segments())
        dyn = elf.get_section_by_name(".dynamic")
        tags = {t.entry.d_tag: t.entry.d_val for t in dyn.iter_tags()}
    DF_BIND_NOW, DF_1_NOW = 0x8, 0x1
    assert tags.get("DT_FLAGS", 0) & DF_BIND_NOW
    assert tags.get("DT_FLAGS_1", 0) & DF_1_NOW


# -- 4. nothing the sandbox can read holds a host address --------------------------------

def _host_ranges() -> list[tuple[int, int]]:
    from tmebox.runtime.native.windows import POOL

    windows = POOL.windows
    ranges = []
    for line in lay.read_host_maps():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if not any(lo >> 32 <= k < -(-hi >> 32) for k in windows if k << 32 < hi):
            ranges.append((lo, hi))
    return ranges


def _host_addresses_in(data: bytes, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    found = []
    for i in range(len(data) - 7):
        v = int.from_bytes(data[i:i + 8], "little")
        if any(lo <= v < hi for lo, hi in ranges):
            found.append((i, v))
    return found


SCANNED = r"""
    .globl main
main:
    ret
    .globl pids
pids:
    movl $39, %eax
    rtcall
    ret
"""


def test_no_host_address_in_the_runtime_page_or_the_window(rt):
    img = rt.load_unverified(assemble(SCANNED))
    sb = rt.spawn(img)
    assert sb.call("pids") == 1  # a runtime call and a return went through the stubs
    L = sb._layout
    ranges = _host_ranges()
    page = sb.memory.read(sb.base + L.code_lo, 4096)
    assert _host_addresses_in(page, ranges) == []
    # everything else the sandbox can read that is not zero-fill: code, stack, data, bss
    for lo, hi in ((L.code_lo, L.code_hi), (L.rw_lo, L.heap)):
        assert _host_addresses_in(sb.memory.read(sb.base + lo, hi - lo), ranges) == []
