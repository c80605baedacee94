"""Adversarial: on the tme backend guest code runs at CPL 3, as it does natively.

Each instruction below is one the verifier refuses; `load_unverified` plays the part of
"something slipped past the verifier". At CPL 0 (unicorn's default) each would run and
reconfigure the emulated machine (page tables, control registers, MSRs such as the GS
base, descriptor tables); at CPL 3 each ends the call with the fault the real CPU raises
for it, and the emulated machine is as it was.
"""

from __future__ import annotations

import pytest
from asm_image import assemble
from unicorn import x86_const as x86

import tmebox
from tmebox.errors import SandboxFault

MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE = 0xC000_0100, 0xC000_0101, 0xC000_0102
MSR_EFER, MSR_STAR, MSR_LSTAR = 0xC000_0080, 0xC000_0081, 0xC000_0082
DONE = 0x600D  # what an op returns if its instruction did not fault

# name -> (instructions, kind of fault on this machine's CPU at CPL 3). Arguments: %rdi,
# %rsi as the test passes them. #GP is "segv", #UD "illegal-instruction".
OPS: dict[str, tuple[str, str]] = {
    "mov_to_cr0": ("movq %cr0, %rax\n btrq $16, %rax\n movq %rax, %cr0", "segv"),
    "mov_to_cr3": ("movq %rdi, %cr3", "segv"),
    "mov_to_cr4": ("movq %rdi, %cr4", "segv"),
    "mov_from_cr3": ("movq %cr3, %rax", "segv"),
    "mov_to_dr7": ("movq %rdi, %dr7", "segv"),
    "wrmsr": ("movl %edi, %ecx\n movl %esi, %eax\n movq %rsi, %rdx\n shrq $32, %rdx\n wrmsr",
              "segv"),
    "rdmsr": ("movl %edi, %ecx\n rdmsr", "segv"),
    "lgdt": ("movw $0xfff, -16(%rsp)\n movq %rdi, -14(%rsp)\n lgdt -16(%rsp)", "segv"),
    "lidt": ("movw $0xfff, -16(%rsp)\n movq %rdi, -14(%rsp)\n lidt -16(%rsp)", "segv"),
    "lldt": ("xorl %eax, %eax\n lldt %ax", "segv"),
    "ltr": ("movl $0x28, %eax\n ltr %ax", "segv"),
    "lmsw": ("xorl %eax, %eax\n lmsw %ax", "segv"),
    "clts": ("clts", "segv"),
    "swapgs": ("swapgs", "segv"),
    "hlt": ("hlt", "segv"),
    "cli": ("cli", "segv"),
    "sti": ("sti", "segv"),
    "in_dx": ("movl $0x80, %edx\n inb %dx, %al", "segv"),
    "out_dx": ("movl $0x80, %edx\n outb %al, %dx", "segv"),
    "in_imm": ("inl $0x70, %eax", "segv"),
    "out_imm": ("outb %al, $0x70", "segv"),
    # the emulator stops at the end of the block after an out: the out's fault stands
    "out_then_int3": ("outb %al, $0x70\n int3", "segv"),
    "invlpg": ("invlpg (%rsp)", "segv"),
    "wbinvd": ("wbinvd", "segv"),
    "invd": ("invd", "segv"),
    "xsetbv": ("xorl %ecx, %ecx\n xgetbv\n xsetbv", "segv"),
    "sysretq": ("sysretq", "segv"),
    "sysexit": ("sysexit", "segv"),
    "sysenter": ("sysenter", "illegal-instruction"),  # #UD in long mode on AMD
}
# Native, these enter the Linux kernel (a real system call): only the emulator is checked.
# The emulated machine has no kernel behind them; a gate-less `int n` is a #GP.
EMULATOR_ONLY: dict[str, tuple[str, str]] = {
    "syscall": ("syscall", "illegal-instruction"),
    "int80": ("int $0x80", "segv"),
    "int14": ("int $14", "segv"),  # not a page fault: nothing is paged in, CR2 is stale
    "int8": ("int $8", "segv"),
}

BODY = r"""
    .globl main
main:
    xorl %eax, %eax
    ret

    .globl cpl
cpl:
    movl %cs, %eax
    andl $3, %eax
    ret

    .globl get_ss
get_ss:
    movl %ss, %eax
    ret

    .globl load64
load64:
    movq %gs:(%edi), %rax
    ret
""" + "".join(f"""
    .globl op_{name}
op_{name}:
    {code}
    movl ${DONE}, %eax
    ret
""" for name, (code, _) in {**OPS, **EMULATOR_ONLY}.items())

_STATE_REGS = {
    "cr0": x86.UC_X86_REG_CR0, "cr3": x86.UC_X86_REG_CR3, "cr4": x86.UC_X86_REG_CR4,
    "gdtr": x86.UC_X86_REG_GDTR, "idtr": x86.UC_X86_REG_IDTR, "ldtr": x86.UC_X86_REG_LDTR,
    "tr": x86.UC_X86_REG_TR, "dr7": x86.UC_X86_REG_DR7, "gs_base": x86.UC_X86_REG_GS_BASE,
    "fs_base": x86.UC_X86_REG_FS_BASE,
}
_STATE_MSRS = (MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_KERNEL_GS_BASE)


@pytest.fixture(scope="module")
def plan():
    return assemble(BODY)


@pytest.fixture
def rt():
    with tmebox.Runtime(backend="tme", max_sandboxes=8, pool_size=32 << 20,
                        heap_size=256 << 10, resident_pages=256) as runtime:
        yield runtime


def _machine(rt) -> dict[str, object]:
    """The emulated machine's privileged state, as the CPU now holds it."""
    uc = rt.backend.uc
    state: dict[str, object] = {k: uc.reg_read(r) for k, r in _STATE_REGS.items()}
    state.update({f"msr {m:#x}": uc.msr_read(m) for m in _STATE_MSRS})
    return state


def _args(name: str, victim, machine: dict[str, object]) -> tuple[int, ...]:
    """Arguments that make each op an attack (e.g. the GS base pointed at a neighbour)."""
    efer = int(machine[f"msr {MSR_EFER:#x}"])  # type: ignore[call-overload]
    return {
        "mov_to_cr3": (0,),
        "mov_to_cr4": (0x20,),  # PAE only: FSGSBASE and OSFXSR off
        "mov_to_dr7": (0x3FF,),
        "wrmsr_gs_base": (MSR_GS_BASE, victim.base),
        "wrmsr_fs_base": (MSR_FS_BASE, victim.base),
        "wrmsr_kernel_gs_base": (MSR_KERNEL_GS_BASE, victim.base),
        "wrmsr_efer": (MSR_EFER, efer & ~(1 << 11)),  # NX off: data pages executable
        "wrmsr_lstar": (MSR_LSTAR, victim.base),
        "wrmsr_star": (MSR_STAR, 0x0023_0010 << 32),
        "rdmsr": (MSR_GS_BASE,),
        "lgdt": (0x1234000,),
        "lidt": (0x1234000,),
    }.get(name, ())


WRMSR_CASES = ("wrmsr_gs_base", "wrmsr_fs_base", "wrmsr_kernel_gs_base", "wrmsr_efer",
               "wrmsr_lstar", "wrmsr_star")
CASES = [c for c in OPS if c != "wrmsr"] + list(WRMSR_CASES)


def _op(case: str) -> str:
    return "wrmsr" if case in WRMSR_CASES else case


def test_guest_code_runs_at_cpl_3_with_user_segments(rt, plan):
    img = rt.load_unverified(plan)
    sb = rt.spawn(img)
    assert sb.call("cpl") == 3
    assert sb.call("get_ss") & 3 == 3
    assert rt.spawn(img).run() == 0  # start-up: a runtime call, then main, then exit
    assert sb.call("cpl") == 3


@pytest.mark.parametrize("case", CASES + list(EMULATOR_ONLY))
def test_a_privileged_instruction_faults_and_changes_nothing(rt, plan, case):
    img = rt.load_unverified(plan)
    victim, attacker = rt.spawn(img), rt.spawn(img)
    attacker.call("main")
    before = _machine(rt)  # the attacker's state as its last call ended
    kind = {**OPS, **EMULATOR_ONLY}[_op(case)][1]
    with pytest.raises(SandboxFault) as e:
        attacker.call(f"op_{_op(case)}", *_args(case, victim, before))
    assert e.value.kind == kind
    assert e.value.address is not None and e.value.address >> 32 == attacker.base >> 32
    assert _machine(rt) == before
    assert victim.call("cpl") == 3
    assert victim.call("load64", victim.alloc(64)) == 0
    assert rt.spawn(img).call("cpl") == 3


@pytest.mark.parametrize("op", list(OPS))
def test_the_fault_kinds_are_what_this_machines_cpu_raises(plan, op):
    """The table above, checked on the real CPU: the native backend runs the same code."""
    with tmebox.Runtime(backend="native", max_sandboxes=4) as rt:
        img = rt.load_unverified(plan)
        victim, attacker = rt.spawn(img), rt.spawn(img)
        with pytest.raises(SandboxFault) as e:
            attacker.call(f"op_{op}", *_args(op, victim, {f"msr {MSR_EFER:#x}": 0}))
        assert e.value.kind == OPS[op][1]
        assert victim.call("cpl") == 3
