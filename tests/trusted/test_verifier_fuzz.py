"""Fuzzing the verifier: it never crashes, and what it accepts never leaves its window.

The monitor runs accepted samples in unicorn with the window at a non-zero base (5 << 32),
%gs base = %r14 = window base, %rsp inside, random other registers, and records every memory
access and every executed instruction. The property: nothing executes outside the window, no
access outside the window succeeds, and accesses that fault stay within the window or the
guards next to it. In code+data mode this covers any control flow (indirect targets are
masked); in data mode it holds only for code without indirect branches and ret, so data-mode
samples are drawn from a pool without them.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn import x86_const as r

sys.path.insert(0, str(Path(__file__).parent / "verifier_corpus"))
import asmkit  # noqa: E402

from tmebox.errors import ImageError  # noqa: E402
from tmebox.trusted import abi, verifier  # noqa: E402
from tmebox.trusted.image import Image  # noqa: E402

BASE = 5 << abi.WINDOW_SHIFT
IMAGE = BASE + abi.IMAGE_WINDOW_OFFSET  # image offset 0
CODE = IMAGE + asmkit.CODE_OFFSET
MAPPED = 16 << 20  # window bytes mapped after the low guard (the rest of the window faults)
# Guards are unmapped; everything outside [window - guard, window + 4 GiB + guard) that is
# mapped is a canary.
CANARY = 1 << 20  # mapped memory just past each neighbour guard: an escape there succeeds
IMAGE_SIZE = 4 << 20
STEPS = 300
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

# Instructions the samples are built from, each assembled once: confined forms (SAFE) and
# escapes or group members out of place (RISKY); samples mostly draw SAFE ones so that
# accepted samples run long enough to matter.
SAFE = [
    "mov rax, qword ptr gs:[edi]", "mov qword ptr gs:[esp + 8], rax",
    "mov dword ptr gs:[eax + ecx*4 + 16], edx", "add qword ptr gs:[ebx], 1",
    "mov rax, qword ptr [rip + inside_data]", "mov qword ptr [rip + inside_data], rax",
    "lea rdi, [rip + inside_data]", "lea rsi, [rax + 8]", "push rax", "pop rbx",
    "push qword ptr gs:[eax]", "pop qword ptr gs:[ecx]", "sub esp, 0x100000\nlea rsp, [rsp + r14]",
    "and rsp, -16", "mov esp, eax\nlea rsp, [rsp + r14]", "mov edi, edi\nlea rdi, [r14 + rdi]",
    "mov esi, esi\nlea rsi, [r14 + rsi]", "mov edi, edi\nlea rdi, [r14 + rdi]\nrep stosb",
    "mov edi, edi\nlea rdi, [r14 + rdi]\nmov esi, esi\nlea rsi, [r14 + rsi]\nrep movsb",
    "mov rdi, rax", "mov rsi, rbx", "xchg rdi, rcx", "mov r11, rax", "inc rcx",
    "mov ecx, 64", "xor eax, eax", "shl rdx, 3", "mov rax, 0x7fff00000000",
    "mov rdi, 0x500001000", "mov rsi, 0x600000000", "push rsp",
    "movdqu xmm0, xmmword ptr gs:[esi]", "mov esp, dword ptr gs:[eax]\nlea rsp, [rsp + r14]",
    "int3", "ud2",
]
RISKY = [
    "mov rax, qword ptr [rdi]", "mov qword ptr [rsi], rax", "mov qword ptr gs:[rdi], rax",
    "mov eax, dword ptr [edi]", "sub rsp, 0x100000", "add rsp, 8", "mov esp, eax",
    "or rsp, r14", "mov rsp, rax", "rep stosb", "rep movsq", "lodsb", "mov r14, rax",
    "mov r14d, eax", "mov rax, qword ptr fs:[0]", "pop rsp", "leave",
    "movdqu xmmword ptr [rdi], xmm0", "mov esp, eax\nor rsp, r14",
    "mov edi, edi\nor rdi, r14\nrep stosb", "lea rsp, [rsp + r14]", "lea rdi, [r14 + rdi]\nstosq",
    "mov esp, eax\nlea rsp, [rsp + r14 + 8]", "mov edi, edi\nlea rdi, [r14 + rdi + 8]\nstosq",
    "mov esi, esi\nlea rsi, [r14 + rsi*2]\nlodsq", "mov edi, edi\nlea rdi, [r14d + edi]\nstosb",
]
GADGETS = SAFE + RISKY  # straight-line
BRANCHES = [
    "and r11d, -32\nor r11, r14\njmp r11", "and r11d, -32\nor r11, r14\ncall r11",
    "pop r11\nand r11d, -32\nor r11, r14\njmp r11", "jmp r11", "call rax", "ret",
    "pop r11\nand r11d, -32\nor r11, r14\npush r11\nret", "and r11d, -32\npush r11\nret",
    "push r11\nret",
    "call __tmebox_rt_syscall", "jmp __tmebox_rt_other",
]


def gadget_names(with_branches: bool) -> st.SearchStrategy[list[str]]:
    risky = RISKY + BRANCHES if with_branches else RISKY
    one = st.sampled_from(SAFE) | st.sampled_from(SAFE) | st.sampled_from(SAFE) \
        | st.sampled_from(risky)
    return st.lists(one, min_size=1, max_size=16)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, bytes]:
    workdir = tmp_path_factory.mktemp("gadgets")
    return {g: asmkit.assemble(g, workdir) for g in GADGETS + BRANCHES}


def bundle(pieces: list[bytes]) -> bytes:
    """Lay gadgets out like `.bundle_align_mode 5` (pad with nops so none crosses a bundle)."""
    out = bytearray()
    for piece in pieces:
        room = -len(out) % abi.BUNDLE_SIZE
        if len(piece) > room:
            out += b"\x90" * room
        out += piece
    return bytes(out)


def verify(code: bytes, mode: str) -> verifier.Verdict:
    return verifier.verify_code(code, code_offset=asmkit.CODE_OFFSET, image_size=IMAGE_SIZE,
                                isolation=mode)


class Monitor:
    """Runs code in a window at BASE and records what would break isolation."""

    def __init__(self, code: bytes, regs: list[int]) -> None:
        self.violations: list[str] = []
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        low_guard, high_guard = BASE - abi.GUARD_SIZE, BASE + abi.WINDOW_SIZE
        # As the runtime maps it: code R+X (runtime page included), the rest R+W, no X —
        # a masked branch can land on any bundle in the window, and data must not run.
        code_size = -(-(asmkit.CODE_OFFSET + len(code) + 64) // abi.PAGE_SIZE) * abi.PAGE_SIZE
        uc.mem_map(IMAGE, code_size, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_map(IMAGE + code_size, MAPPED - code_size, UC_PROT_READ | UC_PROT_WRITE)
        uc.mem_map(low_guard - CANARY, CANARY)  # a neighbour, past its guard
        uc.mem_map(high_guard + abi.GUARD_SIZE, CANARY)
        uc.mem_map(0, CANARY)  # low memory, where absolute addresses point
        uc.mem_write(IMAGE, b"\xcc" * abi.RT_PAGE_SIZE)
        uc.mem_write(CODE, code)
        uc.mem_write(CODE + len(code), b"\xcc" * 64)
        uc.reg_write(r.UC_X86_REG_GS_BASE, BASE)
        uc.reg_write(r.UC_X86_REG_FS_BASE, low_guard - CANARY)  # a host thread pointer
        names = ["RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "R8", "R9", "R10", "R11",
                 "R12", "R13", "R15"]
        for name, value in zip(names, regs, strict=False):
            uc.reg_write(getattr(r, f"UC_X86_REG_{name}"), value)
        uc.reg_write(r.UC_X86_REG_R14, BASE)
        uc.reg_write(r.UC_X86_REG_RSP, IMAGE + MAPPED // 2)
        uc.hook_add(UC_HOOK_CODE, self.on_code)
        uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self.on_access)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self.on_fault)
        self.code_end = CODE + len(code)

    def run(self, start: int = CODE) -> None:
        # A fault ends the sandbox call; what it touched before is what matters.
        with contextlib.suppress(UcError):
            self.uc.emu_start(start, self.code_end, count=STEPS)

    def on_code(self, uc: Uc, address: int, size: int, _: object) -> None:
        if not BASE <= address < BASE + abi.WINDOW_SIZE:
            self.violations.append(f"executes at {address:#x}")
        if IMAGE <= address < IMAGE + abi.RT_PAGE_SIZE:
            uc.emu_stop()  # a runtime entry: the host takes over

    def on_access(self, uc: Uc, access: int, address: int, size: int, value: int,
                  _: object) -> None:
        # unicorn reports an access before it faults: one that reaches into a guard (never
        # mapped here; e.g. a push at the window base, a %gs access straddling its end) faults.
        if not BASE - abi.GUARD_SIZE <= address < address + size \
                <= BASE + abi.WINDOW_SIZE + abi.GUARD_SIZE:
            self.violations.append(f"accesses {address:#x} (+{size}) at "
                                   f"{uc.reg_read(r.UC_X86_REG_RIP):#x}")

    def on_fault(self, uc: Uc, access: int, address: int, size: int, value: int,
                 _: object) -> bool:
        if not (BASE - abi.GUARD_SIZE <= address <= BASE + abi.WINDOW_SIZE + abi.GUARD_SIZE):
            self.violations.append(f"faults at {address:#x} outside window and guards")
        return False


def registers() -> st.SearchStrategy[list[int]]:
    near = st.integers(0, MAPPED + abi.IMAGE_WINDOW_OFFSET)  # mostly lands on mapped memory
    anywhere = st.integers(0, (1 << 64) - 1)
    window = st.integers(BASE, BASE + abi.WINDOW_SIZE - 1)
    return st.lists(near | near | anywhere | window, min_size=14, max_size=14)


def check_run(code: bytes, regs: list[int], start: int = 0) -> None:
    monitor = Monitor(code, regs)
    monitor.run(CODE + start)
    assert not monitor.violations, (code.hex(), monitor.violations)


# --- the monitor itself catches escapes (so that its silence means something) ----------------

@pytest.mark.parametrize("escape", ["mov qword ptr [rsi], rax", "rep movsq",
                                    "mov rsp, rax\npush rax", "jmp rax",
                                    "mov rax, qword ptr fs:[0]"])
def test_monitor_sees_unverified_escapes(escape: str, tmp_path: Path) -> None:
    code = asmkit.assemble(escape, tmp_path)
    assert not verify(code, "code+data").ok
    monitor = Monitor(code, [0x1000] * 14)
    monitor.uc.reg_write(r.UC_X86_REG_RSI, BASE - abi.GUARD_SIZE - 64)
    monitor.uc.reg_write(r.UC_X86_REG_RAX, 0x100)
    monitor.uc.reg_write(r.UC_X86_REG_RCX, 4)
    monitor.run()
    assert monitor.violations


def test_monitor_accepts_confined_code(pool: dict[str, bytes]) -> None:
    code = bundle([pool[g] for g in SAFE[:4]] + [pool[BRANCHES[2]]])
    assert verify(code, "code+data").ok
    check_run(code, [0x100] * 14)


# --- fuzzing -------------------------------------------------------------------------------

@FUZZ
@given(code=st.binary(max_size=200), mode=st.sampled_from(abi.ISOLATION_MODES))
def test_random_bytes_only_give_verdicts(code: bytes, mode: str) -> None:
    verdict = verify(code, mode)
    assert verdict.ok or (verdict.rule in verifier.RULES and verdict.reason)
    assert verdict.summary()


@FUZZ
@given(data=st.data(), mode=st.sampled_from(abi.ISOLATION_MODES))
def test_mutated_code_only_gives_verdicts_and_accepted_code_stays_inside(
        pool: dict[str, bytes], data: st.DataObject, mode: str) -> None:
    gadgets = list(pool.values())
    code = bytearray(bundle(data.draw(st.lists(st.sampled_from(gadgets), max_size=12))))
    for _ in range(data.draw(st.integers(0, 3))):
        if code:
            code[data.draw(st.integers(0, len(code) - 1))] = data.draw(st.integers(0, 255))
    verdict = verify(bytes(code), mode)
    assert verdict.ok or verdict.rule in verifier.RULES
    if verdict.ok and mode == "code+data":
        check_run(bytes(code), data.draw(registers()))


@FUZZ
@given(data=st.data())
def test_accepted_code_data_samples_stay_inside(pool: dict[str, bytes],
                                                data: st.DataObject) -> None:
    names = data.draw(gadget_names(with_branches=True))
    code = bundle([pool[n] for n in names])
    if verify(code, "code+data").ok:
        check_run(code, data.draw(registers()))


@FUZZ
@given(data=st.data())
def test_accepted_straight_line_data_samples_stay_inside(pool: dict[str, bytes],
                                                         data: st.DataObject) -> None:
    names = data.draw(gadget_names(with_branches=False))
    code = b"".join(pool[n] for n in names)
    if verify(code, "data").ok:
        check_run(code, data.draw(registers()))


@pytest.fixture
def compiled_code(build_image) -> bytes:
    """The code (after the runtime page) of a real code+data program built by tmebox cc."""
    source = Path(__file__).parents[1] / "toolchain" / "programs" / "qsort.c"
    image = Image.load(build_image(source))
    return image.code.data[image.rt_range[1]:]


@FUZZ
@given(data=st.data())
def test_mutated_compiled_code(compiled_code: bytes, data: st.DataObject) -> None:
    """Compiled code with bytes flipped: verdicts only; when it still passes, running it from
    any bundle start (where a masked branch may land) stays inside."""
    code = bytearray(compiled_code)
    for _ in range(data.draw(st.integers(1, 3))):
        code[data.draw(st.integers(0, len(code) - 1))] = data.draw(st.integers(0, 255))
    verdict = verify(bytes(code), "code+data")
    assert verdict.ok or verdict.rule in verifier.RULES
    if verdict.ok:
        start = data.draw(st.integers(0, len(code) // abi.BUNDLE_SIZE - 1)) * abi.BUNDLE_SIZE
        check_run(bytes(code), data.draw(registers()), start)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> bytes:
    program = """
    .text
    .bundle_align_mode 5
    .globl _start
    .p2align 5
_start:
    mov rax, qword ptr [rip + self_pointer]
    mov qword ptr gs:[esp + 8], rax
    jmp _start
"""
    return asmkit.link_image(program, tmp_path_factory.mktemp("img")).read_bytes()


@FUZZ
@given(data=st.data())
def test_mutated_image_files_give_image_errors_or_verdicts(image_file: bytes,
                                                           data: st.DataObject) -> None:
    blob = bytearray(image_file)
    for _ in range(data.draw(st.integers(1, 6))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        image = Image.from_bytes(bytes(blob), "fuzz.box")
    except ImageError:
        return
    verdict = verifier.verify_image(image)
    assert verdict.ok or verdict.rule in verifier.RULES


def test_fuzz_pool_accepts_enough_to_matter(pool: dict[str, bytes]) -> None:
    """Guard against a monitor test that only ever sees rejected samples."""
    assert [g for g in SAFE if not verify(bundle([pool[g]]), "code+data").ok] == []
    assert [g for g in RISKY if verify(bundle([pool[g]]), "code+data").ok] == []
