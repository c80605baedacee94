"""The real CPU as the oracle: run sequences in the monitor's child and judge each stop.

`monitor.c` (compiled on first use) forks a traced child whose address space holds one sandbox
window and nothing else, and reports where each sequence stopped. `judge` decides what the stop
means (docs/escape-fuzzer.md, "Outcomes"): the sequence ended at a trap in the window, faulted
inside the window, ran out of time, or escaped.
"""

from __future__ import annotations

import enum
import os
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import iced_x86 as ix

from tmebox.errors import TmeboxError
from tmebox.trusted import abi, cache

if TYPE_CHECKING:
    from iced_x86._iced_x86_py import Register as RegisterT  # a module of ints at run time

__all__ = ["BASES", "CODE_ADDRESS_OFFSET", "CODE_SIZE", "FS_BASE", "IMAGE_SIZE", "REGISTERS",
           "RW_END", "TOP_SIZE", "Oracle", "OracleError", "Outcome", "Result", "Sample",
           "monitor_path"]

SOURCE = Path(__file__).with_name("monitor.c")

# The child's window (image offsets; the image sits at window offset abi.IMAGE_WINDOW_OFFSET).
CODE_SIZE = 0x10000  # R+X: the runtime page (int3) and the sequence at abi.RT_PAGE_SIZE
RW_END = 16 << 20  # R+W from CODE_SIZE up to here: stack and data
TOP_SIZE = 1 << 20  # R+W just below the high guard, for accesses that wrap around 4 GiB
IMAGE_SIZE = RW_END  # what the verifier is told: %rip-relative targets must lie below it
CODE_ADDRESS_OFFSET = abi.IMAGE_WINDOW_OFFSET + abi.RT_PAGE_SIZE  # window offset of a sequence
FS_BASE = 0x7E00_0000_0000  # a host thread pointer: unmapped in the child, like all but the window
# Window bases, one child at a time: the base added twice (the bsf/cmpxchg hole) lands on
# unmapped canonical memory for the first two, on a non-canonical address for the others.
BASES = (1 << 32, 5 << 32, 0x4000 << 32, 0x7000 << 32)
MAX_CODE = 1 << 15
TIMEOUT_US = 20_000
BATCH = 128  # responses of one batch stay well inside a pipe buffer

REGISTERS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15")
_USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
              "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
              "gs_base", "ds", "es", "fs", "gs")
_MAGIC = 0x46454D54
_REQUEST = struct.Struct("<4I16QQ")
_RESPONSE = struct.Struct(f"<IiiI4Q{len(_USER_REGS)}Q")
_K_SIGNAL, _K_SYSCALL, _K_TIMEOUT, _K_DIED = range(4)
_F_SELECTORS, _F_STACK = 1, 2
SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV = 4, 5, 7, 8, 11
SI_KERNEL = 0x80
_PAGE_FAULT_CODES = {SIGSEGV: (1, 2, 4), SIGBUS: (1, 2)}  # MAPERR ACCERR PKUERR / ADRALN ADRERR
# Flags user code can only set through popf/iret (which the verifier rejects): TF, NT, AC, ID.
_SYSTEM_FLAGS = (1 << 8) | (1 << 14) | (1 << 18) | (1 << 21)


class OracleError(TmeboxError):
    """The monitor could not be built, started, or misbehaved."""


class Outcome(enum.Enum):
    END = "end"  # a trap (int3, ud2 at a runtime entry...) inside the window: the normal end
    FAULT = "fault"  # a fault whose every address lies in the window or its guards
    TIMEOUT = "timeout"  # still running after the time budget (killed)
    ESCAPE = "escape"


@dataclass(frozen=True)
class Sample:
    """One sequence and the state it starts in.

    regs: the 16 GPRs in REGISTERS order; bit i of rel_mask adds the window base to regs[i]
    (the sample does not know which window it will run in). %r14 is always the window base.
    start: offset of the first instruction from the code's start.
    """

    code: bytes
    regs: tuple[int, ...]
    rel_mask: int = 1 << 4
    rflags: int = 0
    start: int = 0
    base_index: int = 0


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    reason: str
    base: int = 0
    rip: int = 0
    signo: int = 0
    si_code: int = 0
    address: int = 0
    regs: dict[str, int] | None = None

    def summary(self) -> str:
        text = f"{self.outcome.value}: {self.reason}"
        if self.regs is not None:
            text += f" (rip {self.rip:#x}, window {self.base:#x})"
        return text


def monitor_path() -> Path:
    """The monitor binary, compiled from monitor.c into the cache on first use."""
    out = cache.shared() / "fuzz" / f"monitor-{cache.fingerprint([SOURCE])}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".monitor-")
    os.close(fd)
    try:
        proc = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", tmp,
                               str(SOURCE)], capture_output=True, text=True)
        if proc.returncode:
            raise OracleError(f"compiling {SOURCE} failed:\n{proc.stderr}")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


class Oracle:
    """A running monitor; `run(samples)` returns one Result per sample."""

    def __init__(self, timeout_us: int = TIMEOUT_US) -> None:
        args = [abi.GUARD_SIZE, abi.IMAGE_WINDOW_OFFSET, CODE_SIZE, RW_END, TOP_SIZE,
                abi.RT_PAGE_SIZE, FS_BASE, timeout_us, *BASES]
        self._proc = subprocess.Popen([str(monitor_path()), *map(hex, args)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr  # all three PIPE
        self._stdin, self._stdout, self._stderr = (self._proc.stdin, self._proc.stdout,
                                                   self._proc.stderr)

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._stdin.close()
            self._proc.wait()
        self._stdout.close()
        self._stderr.close()

    def run(self, samples: Sequence[Sample]) -> list[Result]:
        results: list[Result] = []
        for i in range(0, len(samples), BATCH):
            batch = samples[i:i + BATCH]
            results += [judge(s, r) for s, r in zip(batch, self._exchange(batch), strict=True)]
        return results

    def _exchange(self, batch: Sequence[Sample]) -> list[tuple]:
        out = [struct.pack("<II", _MAGIC, len(batch))]
        for s in batch:
            if len(s.code) > MAX_CODE or not 0 <= s.start < MAX_CODE \
                    or not 0 <= s.base_index < len(BASES) or len(s.regs) != 16:
                raise OracleError(f"sample out of range: {s}")
            out.append(_REQUEST.pack(len(s.code), s.start, s.base_index, s.rel_mask,
                                     *(r % (1 << 64) for r in s.regs), s.rflags))
            out.append(s.code)
        try:
            self._stdin.write(b"".join(out))
            self._stdin.flush()
            data = self._stdout.read(_RESPONSE.size * len(batch))
        except BrokenPipeError:
            data = b""
        if len(data) != _RESPONSE.size * len(batch):
            self._proc.kill()
            raise OracleError("monitor failed: " + self._stderr.read().decode().strip())
        return [_RESPONSE.unpack_from(data, k * _RESPONSE.size) for k in range(len(batch))]


# --- judging a stop --------------------------------------------------------------------------

def _canonical(address: int) -> bool:
    return address < 1 << 47 or address >= (1 << 64) - (1 << 47)


def judge(sample: Sample, response: tuple) -> Result:
    """What a stop means. Every check that can fail names the escape."""
    kind, signo, si_code, flags, si_addr, base, stack0, _stack1, *user = response
    if kind == _K_TIMEOUT:
        return Result(Outcome.TIMEOUT, "time budget exhausted", base)
    if kind == _K_DIED:
        return Result(Outcome.ESCAPE, f"the child died (status {signo})", base)
    regs = dict(zip(_USER_REGS, user, strict=True))
    rip = regs["rip"]
    low, high = base - abi.GUARD_SIZE, base + abi.WINDOW_SIZE + abi.GUARD_SIZE

    def result(outcome: Outcome, reason: str) -> Result:
        return Result(outcome, reason, base, rip, signo, si_code, si_addr, regs)

    if kind == _K_SYSCALL:
        return result(Outcome.ESCAPE, f"system call {regs['orig_rax']} reached the kernel")
    if not base <= rip < base + abi.WINDOW_SIZE:
        return result(Outcome.ESCAPE, f"%rip {rip:#x} outside the window")
    for name, want in (("r14", base), ("gs_base", base), ("fs_base", FS_BASE)):
        if regs[name] != want:
            return result(Outcome.ESCAPE, f"{name} is {regs[name]:#x}, not {want:#x}")
    if flags & _F_SELECTORS:
        return result(Outcome.ESCAPE, "a segment selector changed")
    if regs["eflags"] & _SYSTEM_FLAGS:
        return result(Outcome.ESCAPE, f"system flags set in eflags {regs['eflags']:#x}")
    if not low <= regs["rsp"] < high:
        return result(Outcome.ESCAPE, f"%rsp {regs['rsp']:#x} outside the window")
    if signo == SIGTRAP:
        return result(Outcome.END, "trap")
    if signo in (SIGILL, SIGFPE):
        return result(Outcome.FAULT, "illegal instruction" if signo == SIGILL else "arithmetic")
    if si_code in _PAGE_FAULT_CODES.get(signo, ()):
        if low <= si_addr < high:
            return result(Outcome.FAULT, f"page fault at {si_addr:#x}")
        return result(Outcome.ESCAPE, f"access at {si_addr:#x} outside the window")
    if signo in (SIGSEGV, SIGBUS):
        stack = stack0 if flags & _F_STACK else None
        problem = _unexplained_protection_fault(sample, base, regs, stack)
        if problem:
            return result(Outcome.ESCAPE, problem)
        return result(Outcome.FAULT, "protection fault on in-window addresses")
    return result(Outcome.ESCAPE, f"unexpected signal {signo}")


def _unexplained_protection_fault(sample: Sample, base: int, regs: dict[str, int],
                                  stack: int | None) -> str:
    """A #GP/#SS reports no address. It is contained only if the faulting instruction, decoded
    as Intel and as AMD decode it, touches and branches to in-window addresses alone (then the
    cause was alignment or a privileged opcode, which cannot leave the window). Returns the
    reason it is not contained, or ''."""
    rip = regs["rip"]
    code_start = base + CODE_ADDRESS_OFFSET
    rel = rip - code_start
    if not 0 <= rel < len(sample.code):
        return f"protection fault at {rip:#x}, outside the sequence"
    raw = sample.code[rel:rel + 15] + b"\xcc" * 15
    low, high = base - abi.GUARD_SIZE, base + abi.WINDOW_SIZE + abi.GUARD_SIZE
    for options in (ix.DecoderOptions.NONE, ix.DecoderOptions.AMD):
        ins = next(iter(ix.Decoder(64, raw, options, ip=rip)))
        for address, size in _addresses(ins, base, regs, stack):
            if not (_canonical(address) and low <= address and address + size <= high):
                return f"protection fault: {_text(ins)} reaches {address:#x}"
    return ""


_INFO = ix.InstructionInfoFactory()
_SEGMENT_BASES = {ix.Register.FS: "fs_base", ix.Register.GS: "gs_base"}


def _value(regs: dict[str, int], register: RegisterT) -> int:
    if register == ix.Register.NONE:
        return 0
    info = ix.RegisterInfo(register)
    name = _REGISTER_NAMES.get(info.full_register)
    if name is None:
        raise ValueError(register)
    return regs[name] & ((1 << (8 * info.size)) - 1)


_REGISTER_NAMES = {getattr(ix.Register, n.upper()): n for n in REGISTERS}


def _addresses(ins: ix.Instruction, base: int, regs: dict[str, int],
               stack: int | None) -> list[tuple[int, int]]:
    """(address, size) of every memory access and branch target of `ins` in this state; a
    value that cannot be known (a stack slot that could not be read) counts as outside."""
    out = []
    for m in _INFO.info(ins).used_memory():
        if m.access == ix.OpAccess.NO_MEM_ACCESS:
            continue
        segment = regs[_SEGMENT_BASES[m.segment]] if m.segment in _SEGMENT_BASES else 0
        bits = {ix.CodeSize.CODE32: 32, ix.CodeSize.CODE16: 16}.get(m.address_size, 64)
        offset = _value(regs, m.base) + _value(regs, m.index) * m.scale + m.displacement
        out.append(((segment + offset % (1 << bits)) % (1 << 64),
                    max(ix.MemorySizeInfo(m.memory_size).size, 1)))
    if ins.flow_control in (ix.FlowControl.INDIRECT_BRANCH, ix.FlowControl.INDIRECT_CALL):
        if ins.op0_kind == ix.OpKind.REGISTER:
            out.append((_value(regs, ins.op0_register), 1))
        else:
            out.append((-1, 1))  # a target read from memory: not known here
    elif ins.flow_control == ix.FlowControl.RETURN:
        out.append((-1 if stack is None else stack, 1))
    elif ins.op0_kind in (ix.OpKind.NEAR_BRANCH16, ix.OpKind.NEAR_BRANCH32,
                          ix.OpKind.NEAR_BRANCH64):
        out.append((ins.near_branch_target, 1))
    return out


def _text(ins: ix.Instruction) -> str:
    return ix.Formatter(ix.FormatterSyntax.INTEL).format(ins)
