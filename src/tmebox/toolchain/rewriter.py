"""The instrumenting assembly rewriter (untrusted; the verifier checks its output).

Input is GNU as AT&T x86-64 assembly (``gcc -S``, ``clang -S``, hand-written
``.s``/preprocessed ``.S``); output is assembly for GNU as 2.40 in which every
instruction has one of the forms of docs/design.md. Anything the rewriter cannot
make safe raises :class:`~tmebox.errors.RewriteError` naming the input file,
line, instruction and reason.

The libc build may run this once per file in a fresh interpreter, so the module
imports only ``sys`` and tmebox's ABI constants and exception types.
"""

from __future__ import annotations

import sys

from tmebox.errors import RewriteError
from tmebox.toolchain.asm_syntax import (
    SEGMENT_REGS,
    Insn,
    Mem,
    function_symbols,
    int_value,
    is_register,
    parse_mem,
    reg_name,
    split_label,
    split_operands,
    split_segment,
    split_statements,
    symbols,
)
from tmebox.trusted.abi import (
    BASE_REG,
    BUNDLE_MASK,
    BUNDLE_SIZE,
    CPU_LEVELS,
    CPUID_SYMBOL,
    ISOLATION_MODES,
    RT_SYSCALL_SYMBOL,
    SCRATCH_REG,
    TP_SYMBOL,
)

__all__ = ["rewrite_assembly", "main"]

_BASE = "%" + BASE_REG  # %r14
_SCRATCH = "%" + SCRATCH_REG  # %r11
_BIT_STRING = frozenset(m + w for m in ("bt", "bts", "btr", "btc") for w in ("", "w", "l", "q"))
# With align_calls: the label at the start of each code section that call padding counts from.
CALL_ANCHOR = ".Ltmebox_sec"
_SCRATCH32 = _SCRATCH + "d"  # %r11d
_BUNDLE_SHIFT = BUNDLE_SIZE.bit_length() - 1  # .bundle_align_mode takes log2

_TO32 = {
    "rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx",
    "rsi": "esi", "rdi": "edi", "rbp": "ebp", "rsp": "esp",
    "r8": "r8d", "r9": "r9d", "r10": "r10d", "r11": "r11d",
    "r12": "r12d", "r13": "r13d", "r14": "r14d", "r15": "r15d",
    "riz": "eiz",
}  # fmt: skip
_GPR32 = frozenset(_TO32.values())
_TO64 = {v: k for k, v in _TO32.items()}

_RSP_FAMILY = frozenset(("rsp", "esp", "sp", "spl"))
_R14_FAMILY = frozenset(("r14", "r14d", "r14w", "r14b"))
_R11_FAMILY = frozenset(("r11", "r11d", "r11w", "r11b"))

# Multi-byte NOPs recommended by the Intel SDM, by length.
_NOPS = {
    3: "0x0f,0x1f,0x00",
    4: "0x0f,0x1f,0x40,0x00",
    5: "0x0f,0x1f,0x44,0x00,0x00",
    6: "0x66,0x0f,0x1f,0x44,0x00,0x00",
    7: "0x0f,0x1f,0x80,0x00,0x00,0x00,0x00",
    8: "0x0f,0x1f,0x84,0x00,0x00,0x00,0x00,0x00",
    9: "0x66,0x0f,0x1f,0x84,0x00,0x00,0x00,0x00,0x00",
    10: "0x66,0x2e,0x0f,0x1f,0x84,0x00,0x00,0x00,0x00,0x00",
}
# Re-confining %rsp after a 32-bit write to %esp. lea rather than `orq %r14,%rsp`: the same
# value (the low half of %r14 is zero) without touching the flags, which gcc may keep live
# across the rewritten instruction (docs/design.md). %rsp can only be the base.
_LEA_RSP = f"\tleaq\t(%rsp,{_BASE}), %rsp"
_CALL_DIRECT_LEN = 5  # e8 rel32
_MASKED_BRANCH_LEN = 4 + 3 + 3  # andl $-32,%r11d; orq %r14,%r11; call/jmp *%r11

_PREFIXES = frozenset((
    "lock", "rep", "repe", "repz", "repne", "repnz", "data16", "addr32",
    "notrack", "bnd", "xacquire", "xrelease",
    "cs", "ds", "es", "fs", "gs", "ss", "data32", "addr16", "rex", "rex64",
    "rex.w", "rex.r", "rex.x", "rex.b",
))  # fmt: skip
_REP_PREFIXES = frozenset(("rep", "repe", "repz", "repne", "repnz"))
_BRANCH_DROP_PREFIXES = frozenset(("notrack", "bnd"))

_FORBIDDEN = {
    "changes a segment base": (
        "wrgsbase", "wrfsbase", "rdgsbase", "rdfsbase", "swapgs",
        "lss", "lfs", "lgs", "lssq", "lfsq", "lgsq", "lssl", "lfsl", "lgsl",
    ),
    "is a far transfer": (
        "ljmp", "ljmpq", "ljmpl", "ljmpw", "lcall", "lcallq", "lcalll", "lcallw",
        "lret", "lretq", "lretl", "lretw", "iret", "iretw", "iretl", "iretd", "iretq",
        "sysenter", "sysexit", "sysexitl", "sysexitq", "sysret", "sysretl", "sysretq",
    ),
    "is a software interrupt": ("int", "int3", "into", "int1", "icebp"),
    "is privileged or leaks host state": (
        "cli", "sti", "in", "inb", "inw", "inl", "out", "outb", "outw", "outl",
        "ins", "insb", "insw", "insl", "insd", "outs", "outsb", "outsw", "outsl", "outsd",
        "lgdt", "lidt", "lldt", "ltr", "sgdt", "sidt", "sldt", "str", "smsw", "lmsw",
        "clts", "invd", "wbinvd", "invlpg", "invpcid", "rdmsr", "wrmsr", "rdpmc", "rsm",
        "xsetbv", "lar", "lsl", "verr", "verw", "arpl", "encls", "enclu", "uiret",
        "senduipi", "monitor", "mwait", "umonitor", "umwait", "tpause",
    ),
    "changes protection keys or saves/restores extended state (which includes PKRU)": (
        "wrpkru", "rdpkru", "xrstor", "xrstor64", "xrstors", "xrstors64", "xsave", "xsave64",
        "xsavec", "xsavec64", "xsaveopt", "xsaveopt64", "xsaves", "xsaves64",
        "fxsave", "fxsave64", "fxsaveq", "fxrstor", "fxrstor64", "fxrstorq",
    ),
    "sets the trap and alignment-check flags, which would leak into the host": (
        "popf", "popfq", "popfw", "popfl",
    ),
    "writes %rsp in a way the sandbox cannot confine": ("enter", "enterq", "enterw", "enterl"),
    "accesses memory through an implicit unconfined address": (
        "xlat", "xlatb", "maskmovdqu", "maskmovq", "vmaskmovdqu", "clzero", "movdir64b",
        "enqcmd", "enqcmds",
    ),
    "is transactional memory (its abort path is an unchecked branch)": (
        "xbegin", "xend", "xabort",
    ),
    "is an MPX instruction": (
        "bndmk", "bndcl", "bndcu", "bndcn", "bndmov", "bndldx", "bndstx",
    ),
}  # fmt: skip
_FORBIDDEN_MNEMONICS = {m: why for why, ms in _FORBIDDEN.items() for m in ms}
# VEX-encoded general-purpose instructions (BMI1, BMI2): x86-64-v3, like every v* mnemonic.
_BMI = frozenset(("andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext",
                  "rorx", "sarx", "shlx", "shrx"))
_V3 = CPU_LEVELS.index("x86-64-v3")
_OPMASK = ("kmov", "kand", "kor", "kxor", "knot", "kshift", "kadd", "kunpck", "ktest", "kxnor")

# No regular expressions in this module: importing `re` and compiling the patterns would
# cost more than rewriting a typical file, and the libc build starts one process per file.
_BAD_REGISTER_WHY = "uses a register outside the x86-64 user state the sandbox allows " \
    "(AVX-512, mask, segment, control or debug register; %ymm needs x86-64-v3)"

# String instructions: which of %rdi/%rsi they use.
_STRING_USES = {"movs": ("rdi", "rsi"), "cmps": ("rdi", "rsi"), "stos": ("rdi",),
                "scas": ("rdi",), "lods": ("rsi",)}
_STRING_OPS = {
    stem + sfx: uses for stem, uses in _STRING_USES.items() for sfx in ("", "b", "w", "l", "q", "d")
}
_STRING_OPERANDS = frozenset(("%es:(%rdi)", "(%rdi)", "%ds:(%rsi)", "(%rsi)",
                              "%al", "%ax", "%eax", "%rax"))


def _suffixed(*stems: str) -> frozenset[str]:
    return frozenset(s + x for s in stems for x in ("", "b", "w", "l", "q"))


# Mnemonics whose last (destination) register operand is only read.
_NONWRITING_DEST = _suffixed("cmp", "test", "bt", "push", "mul", "div", "idiv")
_EXCHANGES = _suffixed("xchg", "xadd")
# Writes to %rsp that have a 32-bit form: op[q|l] src, %rsp.
_RSP_ARITH = {stem + size: (stem, size) for stem in ("mov", "add", "sub", "and", "or", "xor", "lea")
              for size in ("", "l", "q")}
# Full (64- or zero-extending 32-bit) writes of a register that read no other %r11.
_R11_KILL = frozenset((
    "mov", "movl", "movq", "lea", "leal", "leaq", "pop", "popq", "movabs", "movabsq",
    "movzbl", "movzbq", "movzwl", "movzwq", "movsbl", "movsbq", "movswl", "movswq", "movslq",
))  # fmt: skip
_SIGNED_RELOCS = ("@tpoff", "@ntpoff", "@dtpoff")
_CONDITIONS = (
    "o", "no", "b", "c", "nae", "ae", "nb", "nc", "e", "z", "ne", "nz", "be", "na", "a", "nbe",
    "s", "ns", "p", "pe", "np", "po", "l", "nge", "ge", "nl", "le", "ng", "g", "nle",
)  # fmt: skip
_JCC = frozenset(["j" + c for c in _CONDITIONS]
                 + ["jcxz", "jecxz", "jrcxz", "loop", "loope", "loopz", "loopne", "loopnz"])
_DATA_DIRECTIVES = frozenset((".quad", ".long", ".int", ".8byte", ".4byte", ".dc.a", ".word",
                              ".short", ".2byte", ".value"))
# Alignments in bytes (.align: bytes on x86 ELF) and as a power of two.
_ALIGN_DIRECTIVES = {".balign": False, ".align": False, ".p2align": True}


def _is_fs_zero(op: str) -> bool:
    seg, rest = split_segment(op)
    return seg == "fs" and int_value(rest) == 0



def _has_signed_reloc(disp: str) -> bool:
    low = disp.lower()
    return any(r in low for r in _SIGNED_RELOCS)



def _bad_register(name: str, level: int) -> bool:
    if name in SEGMENT_REGS:
        return True
    if name.startswith("ymm"):
        return level < _V3 or not name[3:].isdigit() or int(name[3:]) >= 16
    if name.startswith(("zmm", "cr", "dr", "tr", "bnd", "tmm")):
        return True
    if len(name) == 2 and name[0] == "k" and name[1] in "01234567":
        return True
    # xmm16-31 exist only with EVEX encodings.
    return name.startswith("xmm") and name[3:].isdigit() and int(name[3:]) >= 16


def _nop_fill(n: int) -> list[str]:
    lines = []
    while n:
        k = min(10, n)
        if 0 < n - k < 3:
            k = n - 3
        lines.append("\t.byte " + _NOPS[k])
        n -= k
    return lines




class _Rewriter:
    def __init__(self, text: str, isolation: str, source: str,
                 align_calls: bool = False, level: str = CPU_LEVELS[0]) -> None:
        if isolation not in ISOLATION_MODES:
            raise RewriteError(
                f"{source}: unknown isolation mode {isolation!r} "
                f"(expected one of {', '.join(ISOLATION_MODES)})"
            )
        if level not in CPU_LEVELS:
            raise RewriteError(f"{source}: unknown CPU level {level!r} "
                               f"(expected one of {', '.join(CPU_LEVELS)})")
        self.level_name = level
        self.level = CPU_LEVELS.index(level)
        self.text = text
        self.cfi = isolation == "code+data"  # control-flow integrity on
        self.source = source
        self.out: list[str] = []
        self.exec_section = True  # gas starts in .text
        self.section = ".text"
        self.previous = ".text"
        self.prev_exec = True
        self.section_stack: list[tuple[str, bool, str, bool]] = []
        self.pending_prefixes: list[str] = []
        self.pending_line = 0
        self.functions = function_symbols(text)
        # Set when a rewrite clobbered %r11: (line number, instruction text).
        self.r11_clobber: tuple[int, str] | None = None
        # code+data: where each code label was emitted, and the symbols whose address
        # the code or data takes (computed-goto targets among them must be aligned).
        self.code_labels: dict[str, int] = {}
        self.address_taken: set[str] = set()
        # code+data: False = every call group is a whole bundle; True = the assembler
        # pads each to end its bundle, counting from a label at the start of each code
        # section (section name -> label; the one to emit after the current directive).
        self.align_calls = align_calls and self.cfi
        self.anchors: dict[str, str] = {}
        self.pending_anchor: str | None = None

    # -- errors -------------------------------------------------------------------

    def error(self, lineno: int, text: str, why: str) -> RewriteError:
        return RewriteError(f"{self.source}:{lineno}: `{text.strip()}`: {why}")

    # -- top level ----------------------------------------------------------------

    def run(self) -> str:
        out = self.out
        if self.cfi:
            out.append(f"\t.bundle_align_mode {_BUNDLE_SHIFT}")
        if self.align_calls:
            self.anchors[self.section] = f"{CALL_ANCHOR}0"
            out.append(f"{CALL_ANCHOR}0:")
        in_comment = False
        lineno = 0
        lines = self.text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the text's final newline
        for line in lines:
            lineno += 1
            if in_comment:
                end = line.find("*/")
                if end < 0:
                    out.append("")
                    continue
                in_comment = False
                line = line[end + 2:]
            stripped = line.strip()
            if not stripped or stripped[0] == "#":
                out.append(line)
                continue
            if "/*" in line or ";" in line or "#" in line or '"' in line:
                statements, in_comment = split_statements(line)
            else:
                statements = [line]
            for stmt in statements:
                self.statement(stmt, lineno)
        if self.pending_prefixes:
            raise self.error(self.pending_line, " ".join(self.pending_prefixes),
                             "prefix without an instruction at the end of the file")
        if self.cfi:
            self.align_address_taken_labels()
        out.append("")
        return "\n".join(out)

    def align_address_taken_labels(self) -> None:
        """Put code labels whose address is taken (`leaq .L3(%rip)`, `.quad .L3`: C's
        labels as values) on bundle starts, where a masked indirect jump lands."""
        where = sorted((self.code_labels[n] for n in self.address_taken
                        if n in self.code_labels and n not in self.functions), reverse=True)
        for i in where:
            self.out.insert(i, "\t.p2align 5")

    def statement(self, stmt: str, lineno: int) -> None:
        out = self.out
        # Labels, possibly several and possibly followed by an instruction.
        while True:
            label = split_label(stmt)
            if label is None:
                break
            if self.pending_prefixes:
                raise self.error(lineno, stmt, "label between a prefix and its instruction")
            name, rest = label
            if self.cfi and self.exec_section:
                if name.strip('"') in self.functions:
                    # Functions are the supported indirect-branch targets: bundle starts.
                    out.append("\t.p2align 5")
                self.code_labels[name] = len(out)
            out.append(name + ":")
            self.r11_clobber = None
            stmt = rest
        s = stmt.strip()
        if not s:
            return
        if s[0] == ".":
            if self.pending_prefixes:
                raise self.error(lineno, s, "directive between a prefix and its instruction")
            if self.directive(s, lineno):
                out.append("\t" + s)
            if self.pending_anchor:
                out.append(f"{self.pending_anchor}:")
                self.pending_anchor = None
            return
        if not self.exec_section:
            out.append("\t" + s)
            return
        self.instruction(s, lineno)

    # -- directives ---------------------------------------------------------------

    def directive(self, s: str, lineno: int) -> bool:
        """Track sections; False if the directive is to be dropped from the output."""
        parts = s.split(None, 1)
        name = parts[0].lower()
        arg = parts[1] if len(parts) > 1 else ""
        if self.cfi and name in _DATA_DIRECTIVES and not self.section.startswith(".debug"):
            self.address_taken.update(symbols(arg))
        if name in (".addrsig", ".addrsig_sym"):
            # clang's hints for its own linker's code folding; GNU as does not know them.
            return False
        if name == ".att_syntax" and "noprefix" in arg.lower():
            raise self.error(lineno, s, "registers without % are not supported")
        if name == ".text":
            self.switch(".text", True)
        elif name in (".data", ".bss"):
            self.switch(name, False)
        elif name in (".section", ".pushsection"):
            sec, execable = self.section_kind(arg)
            if name == ".pushsection":
                self.section_stack.append(
                    (self.section, self.exec_section, self.previous, self.prev_exec))
            self.switch(sec, execable)
        elif name == ".popsection":
            if not self.section_stack:
                raise self.error(lineno, s, ".popsection without .pushsection")
            self.section, self.exec_section, self.previous, self.prev_exec = \
                self.section_stack.pop()
        elif name == ".previous":
            self.section, self.previous = self.previous, self.section
            self.exec_section, self.prev_exec = self.prev_exec, self.exec_section
        elif name in (".code16", ".code32", ".code16gcc", ".intel_syntax", ".arch"):
            raise self.error(lineno, s, f"{name} is not supported (input must be 64-bit AT&T)")
        elif name.startswith(".bundle_"):
            raise self.error(lineno, s, "input must not control bundling itself")
        elif name in (".macro", ".irp", ".irpc", ".include") and self.exec_section:
            # Their bodies are expanded by the assembler after the rewriter has run.
            raise self.error(lineno, s, f"{name} in code is not supported (expand it first)")
        elif name == ".insn" and self.exec_section:
            raise self.error(lineno, s, ".insn hides an instruction from the rewriter")
        elif name in _ALIGN_DIRECTIVES and self.cfi and self.exec_section:
            self.bundle_align_first(arg, _ALIGN_DIRECTIVES[name])
        return True

    def bundle_align_first(self, arg: str, power: bool) -> None:
        """Before an alignment beyond a bundle (gcc's loops: `.p2align 6`), the same to a
        bundle: gas fills an alignment with nops of up to 11 bytes from where it starts,
        across bundle boundaries, but from a bundle start the rest is whole bundles."""
        first, comma, rest = arg.partition(",")
        n = int_value(first)
        if n is not None and (1 << n if power else n) > BUNDLE_SIZE:
            self.out.append(f"\t.p2align {_BUNDLE_SHIFT}{comma}{rest}")

    def switch(self, section: str, execable: bool) -> None:
        self.previous, self.prev_exec = self.section, self.exec_section
        self.section, self.exec_section = section, execable
        if self.align_calls and execable and section not in self.anchors:
            self.pending_anchor = self.anchors[section] = f"{CALL_ANCHOR}{len(self.anchors)}"
        self.r11_clobber = None

    @staticmethod
    def section_kind(arg: str) -> tuple[str, bool]:
        a = arg.strip()
        if a.startswith('"'):
            end = a.find('"', 1)
            name, rest = (a[1:end], a[end + 1:]) if end > 0 else (a[1:], "")
        else:
            k = len(a)
            for sep in (",", " ", "\t"):
                p = a.find(sep)
                if 0 <= p < k:
                    k = p
            name, rest = a[:k], a[k:]
        rest = rest.lstrip()
        if rest.startswith(","):
            flags = rest[1:].lstrip()
            if flags.startswith('"'):
                return name, "x" in flags[1:].split('"', 1)[0]
        return name, (name == ".text" or name.startswith(".text.")
                      or name in (".init", ".fini"))

    # -- instructions; verifier rules allowed-instruction, segment-register ---------

    def instruction(self, s: str, lineno: int) -> None:
        words = s.split(None, 1)
        prefixes: list[str] = []
        while words and words[0].lower() in _PREFIXES:
            prefixes.append(words[0].lower())
            words = words[1].split(None, 1) if len(words) > 1 else []
        if not words:
            if not self.pending_prefixes:
                self.pending_line = lineno
            self.pending_prefixes.extend(prefixes)
            return
        if self.pending_prefixes:
            prefixes = self.pending_prefixes + prefixes
            s = " ".join(self.pending_prefixes) + " " + s
            self.pending_prefixes = []
        mnemonic = words[0].lower()
        operands = split_operands(words[1].strip()) if len(words) > 1 else []
        text = s
        insn = Insn(prefixes, mnemonic, operands, lineno, text)
        if self.r11_clobber is not None:
            self.check_r11(insn, self.r11_clobber)
        self.out.extend(self.rewrite(insn))

    def check_r11(self, insn: Insn, clobber: tuple[int, str]) -> None:
        """Hand-written code must not read %r11 after a rewrite that clobbered it."""
        mentions = [i for i, op in enumerate(insn.operands) if _mentions(op, _R11_FAMILY)]
        if mentions:
            last = len(insn.operands) - 1
            zeroing = (len(insn.operands) == 2 and insn.mnemonic.startswith(("xor", "sub"))
                       and insn.operands[0] == insn.operands[1]
                       and reg_name(insn.operands[1]) in ("r11", "r11d"))
            if zeroing or (mentions == [last] and is_register(insn.operands[last])
                    and insn.mnemonic in _R11_KILL
                    and reg_name(insn.operands[last]) in ("r11", "r11d")):
                self.r11_clobber = None
                return
            line, text = clobber
            raise self.error(insn.lineno, insn.text,
                             f"uses %r11, the rewriter's scratch register, which the rewrite "
                             f"of line {line} (`{text}`) clobbers")
        if insn.mnemonic in ("call", "callq", "jmp", "jmpq", "ret", "retq", "syscall") \
                or insn.mnemonic in _JCC:
            self.r11_clobber = None

    def group(self, lines: list[str]) -> list[str]:
        if self.cfi:
            return ["\t.bundle_lock", *lines, "\t.bundle_unlock"]
        return lines

    def rewrite(self, insn: Insn) -> list[str]:
        mn = insn.mnemonic
        ops = insn.operands
        if not mn[0].isalpha():
            raise self.error(insn.lineno, insn.text,
                             f"`{mn}` is not an instruction the rewriter understands")
        why = _FORBIDDEN_MNEMONICS.get(mn)
        if why:
            raise self.error(insn.lineno, insn.text, f"`{mn}` {why}")
        self.check_level(insn)
        for p in insn.prefixes:
            if p.startswith("rex") or p in ("data32", "addr16"):
                raise self.error(insn.lineno, insn.text,
                                 f"prefix `{p}` is not supported (for TLS, compile with -fPIE "
                                 "so that no general-dynamic sequences are emitted)")
            if p in SEGMENT_REGS and not mn.startswith("nop"):
                raise self.error(insn.lineno, insn.text,
                                 f"segment prefix `{p}` is only allowed on nops")
        for op in ops:
            if op.startswith("{"):
                raise self.error(insn.lineno, insn.text, "AVX-512 operand decorations")
            r = op[1:] if op.startswith("*") else op
            if is_register(r) and _bad_register(reg_name(r), self.level):
                raise self.error(insn.lineno, insn.text, _BAD_REGISTER_WHY)
        if mn == "hlt":
            # musl's a_crash(); hlt faults in user mode anyway, ud2 is the canonical trap.
            return ["\tud2"]
        if mn.startswith("nop"):
            return ["\t" + insn.text]

        uses = _STRING_OPS.get(mn)
        if uses is not None and not (mn in ("movsd", "cmpsd") and ops):
            return self.string_op(insn, uses)
        if mn == "syscall":
            if ops or insn.prefixes:
                raise self.error(insn.lineno, insn.text, "unexpected syscall form")
            return self.call_direct(RT_SYSCALL_SYMBOL)
        if mn == "cpuid":
            if ops or insn.prefixes:
                raise self.error(insn.lineno, insn.text, "unexpected cpuid form")
            # The glue's cpuid clears what the image's level lacks, so that code which
            # dispatches on cpuid (or __builtin_cpu_supports) picks what the verifier let in.
            return self.call_direct(CPUID_SYMBOL)

        self.check_protected_writes(insn)

        if mn in ("call", "callq", "jmp", "jmpq"):
            return self.branch(insn)
        if mn in ("ret", "retq"):
            return self.ret(insn)
        if mn in _JCC:
            if len(ops) != 1 or ops[0].startswith("*") or "(" in ops[0] \
                    or ops[0].startswith("%"):
                raise self.error(insn.lineno, insn.text, "conditional branch needs a label")
            self.drop_branch_prefixes(insn, "a branch")
            return [self.format([], mn, ops, False)]
        if mn in ("leave", "leaveq"):
            if ops:
                raise self.error(insn.lineno, insn.text, "unexpected operands")
            return [*self.group(["\tmovl\t%ebp, %esp", _LEA_RSP]), "\tpopq\t%rbp"]

        pre, new_ops, addr32 = self.rewrite_operands(insn)
        if new_ops and is_register(new_ops[-1]) and reg_name(new_ops[-1]) in _RSP_FAMILY \
                and mn not in _NONWRITING_DEST \
                and not (mn.startswith("imul") and len(ops) == 1):
            return pre + self.rsp_write(insn, new_ops, addr32)
        if pre or new_ops != ops:
            return pre + [self.format(insn.prefixes, mn, new_ops, addr32)]
        return ["\t" + insn.text]

    # -- verifier rules cpu-level, allowed-instruction ------------------------------

    def check_level(self, insn: Insn) -> None:
        """VEX (v*, BMI) needs x86-64-v3; EVEX and the opmask instructions are refused."""
        mn = insn.mnemonic
        if mn.startswith(_OPMASK):
            raise self.error(insn.lineno, insn.text, "AVX-512 opmask instructions are not "
                             "supported")
        if (mn[0] == "v" or mn in _BMI) and self.level < _V3:
            raise self.error(insn.lineno, insn.text,
                             f"`{mn}` is VEX-encoded: it needs x86-64-v3, and this unit's "
                             f"target is {self.level_name} (build with -march=x86-64-v3)")

    @staticmethod
    def format(prefixes: list[str], mn: str, ops: list[str], addr32: bool) -> str:
        pfx = [p for p in prefixes if p != "addr32"]
        if addr32:
            pfx.append("addr32")
        head = " ".join([*pfx, mn])
        return f"\t{head}\t{', '.join(ops)}" if ops else f"\t{head}"

    # -- verifier rules memory-operand, fs-segment, rip-target ----------------------

    def rewrite_operands(self, insn: Insn) -> tuple[list[str], list[str], bool]:
        """Rewrite every memory operand; returns (lines before, operands, needs addr32)."""
        pre: list[str] = []
        addr32 = False
        out: list[str] = []
        mn = insn.mnemonic
        ops = insn.operands
        for op in ops:
            if op.startswith("$") or (is_register(op)):
                if self.cfi and op.startswith("$"):
                    self.address_taken.update(symbols(op[1:]))
                out.append(op)
                continue
            if op.startswith("*"):
                raise self.error(insn.lineno, insn.text, "`*` operand on a non-branch")
            if mn.startswith("lea"):
                m = parse_mem(op)
                if m.seg is not None:
                    raise self.error(insn.lineno, insn.text, "segment override on lea")
                if self.cfi:
                    self.address_taken.update(symbols(m.disp))
                out.append(op)
                continue
            if mn.startswith("movabs"):
                raise self.error(insn.lineno, insn.text,
                                 "64-bit absolute memory operands cannot be confined")
            if (mn in ("mov", "movq") and len(ops) == 2 and _is_fs_zero(op)
                    and is_register(ops[1]) and reg_name(ops[1]) in _TO32):
                # The thread pointer's self-pointer (musl's __pthread_self).
                return [], [f"{TP_SYMBOL}(%rip)", ops[1]], False
            p, new, a32 = self.rewrite_mem(insn, op)
            pre += p
            addr32 |= a32
            out.append(new)
        return pre, out, addr32

    def rewrite_mem(self, insn: Insn, op: str) -> tuple[list[str], str, bool]:
        try:
            m = parse_mem(op)
        except ValueError as e:
            raise self.error(insn.lineno, insn.text, str(e)) from None
        if m.seg == "fs":
            return self.rewrite_fs(insn, m)
        if m.seg not in (None, "gs"):
            raise self.error(insn.lineno, insn.text,
                             f"segment override %{m.seg}: cannot be confined")
        if m.base in ("rip", "eip"):
            if m.seg is not None or m.base == "eip":
                raise self.error(insn.lineno, insn.text,
                                 "only plain disp(%rip) operands are allowed")
            if insn.mnemonic in _BIT_STRING and is_register(insn.operands[0]):
                # A register bit offset reaches operand + offset/8 (verifier: memory-operand):
                # address the operand through %gs + 32 bits, where that sum wraps.
                self.uses_scratch(insn)
                return [f"\tleaq\t{op}, {_SCRATCH}"], f"%gs:({_SCRATCH32})", False
            return [], op, False
        if m.base is None and m.index is None:
            if _has_signed_reloc(m.disp):
                raise self.error(insn.lineno, insn.text,
                                 "absolute TLS offset without %fs cannot be confined")
            return [], f"%gs:{m.disp}", True
        if m.index is not None and m.index.startswith(("xmm", "ymm", "zmm")):
            raise self.error(insn.lineno, insn.text,
                             "VSIB (gather/scatter) addressing is not supported: one address "
                             "per vector lane cannot be confined")
        base = self.reg32(insn, m.base)
        index = self.reg32(insn, m.index)
        if _has_signed_reloc(m.disp):
            self.require64(insn, m)
            # A TLS offset (negative) does not fit a 32-bit-address displacement field:
            # form the full address in the scratch register first.
            self.uses_scratch(insn)
            lea = f"\tleaq\t{m.with_regs(_to64(base), _to64(index))}, {_SCRATCH}"
            return [lea], f"%gs:({_SCRATCH32})", False
        return [], "%gs:" + m.with_regs(base, index), False

    def rewrite_fs(self, insn: Insn, m: Mem) -> tuple[list[str], str, bool]:
        self.uses_scratch(insn)
        if m.base in ("rip", "eip"):
            raise self.error(insn.lineno, insn.text, "%fs: with a %rip base")
        self.require64(insn, m)
        base = self.reg32(insn, m.base)
        index = self.reg32(insn, m.index)
        pre = [f"\tmovq\t{TP_SYMBOL}(%rip), {_SCRATCH}"]
        disp = m.disp
        if base and index:
            pre.append(f"\tleaq\t(%{_to64(base)},{_SCRATCH}), {_SCRATCH}")
            base = None
        if disp and int_value(disp) is None:
            # Symbolic (x@tpoff): a signed link-time constant; fold it with a 64-bit lea.
            idx = f",%{_to64(index)}" + (f",{m.scale}" if m.scale else "") if index else ""
            if base:
                idx = f",%{_to64(base)}"
            pre.append(f"\tleaq\t{disp}({_SCRATCH}{idx}), {_SCRATCH}")
            return pre, f"%gs:({_SCRATCH32})", False
        if base:
            return pre, f"%gs:{disp}({_SCRATCH32},%{base},1)", False
        if index:
            scale = f",{m.scale}" if m.scale else ""
            return pre, f"%gs:{disp}({_SCRATCH32},%{index}{scale})", False
        return pre, f"%gs:{disp}({_SCRATCH32})", False

    def uses_scratch(self, insn: Insn) -> None:
        for op in insn.operands:
            if _mentions(op, _R11_FAMILY):
                raise self.error(insn.lineno, insn.text,
                                 "uses %r11, which the rewrite of this instruction needs as "
                                 "scratch")
        self.r11_clobber = (insn.lineno, insn.text)

    def require64(self, insn: Insn, m: Mem) -> None:
        # These operands are recomputed with a 64-bit lea; a 32-bit register would be
        # zero-extended by the original instruction but not by the lea.
        for r in (m.base, m.index):
            if r is not None and r not in _TO32:
                raise self.error(insn.lineno, insn.text,
                                 f"address register %{r} must be a 64-bit register here")

    def reg32(self, insn: Insn, reg: str | None) -> str | None:
        if reg is None:
            return None
        if reg in _TO32:
            return _TO32[reg]
        if reg in _GPR32:
            return reg
        raise self.error(insn.lineno, insn.text,
                         f"address register %{reg} is not a 64- or 32-bit general register")

    # -- verifier rules stack-pointer, base-register --------------------------------

    def check_protected_writes(self, insn: Insn) -> None:
        mn = insn.mnemonic
        ops = insn.operands
        regs = [reg_name(op) for op in ops if is_register(op)]
        if mn in _EXCHANGES:
            for r in regs:
                if r in _R14_FAMILY or r in _RSP_FAMILY:
                    raise self.error(insn.lineno, insn.text,
                                     f"`{mn}` writes %{r}, which sandbox code must not change "
                                     "this way")
        if not ops or not is_register(ops[-1]):
            return
        dest = reg_name(ops[-1])
        if dest in _R14_FAMILY and mn not in _NONWRITING_DEST \
                and not (mn.startswith("imul") and len(ops) == 1) \
                and mn not in ("call", "callq", "jmp", "jmpq"):
            raise self.error(insn.lineno, insn.text,
                             f"writes %{dest}: %{BASE_REG} holds the window base and is "
                             "reserved (compile with -ffixed-r14)")
        if dest in _RSP_FAMILY and mn in ("pop", "popq", "popw"):
            raise self.error(insn.lineno, insn.text, "pop into %rsp cannot be confined")
        if mn.startswith("mulx") and len(ops) == 3 and is_register(ops[1]):
            low = reg_name(ops[1])  # mulx writes its middle operand too
            if low in _R14_FAMILY or low in _RSP_FAMILY:
                raise self.error(insn.lineno, insn.text, f"`mulx` writes %{low}, which sandbox "
                                 "code must not change this way")

    def rsp_write(self, insn: Insn, ops: list[str], addr32: bool) -> list[str]:
        mn = insn.mnemonic
        dest = reg_name(ops[-1])
        m = _RSP_ARITH.get(mn)
        if m is None or len(ops) != 2 or dest not in ("rsp", "esp"):
            raise self.error(insn.lineno, insn.text,
                             "unsupported write to the stack pointer (only mov/add/sub/and/or/"
                             "xor/lea of %rsp, push/pop/call/ret and leave are rewritten)")
        stem, size = m
        if dest == "rsp":
            if size == "l":
                raise self.error(insn.lineno, insn.text, "operand size mismatch")
            src = ops[0]
            if stem == "and" and size in ("q", ""):
                imm = int_value(src[1:]) if src.startswith("$") else None
                if imm is not None and (-(1 << 31) <= imm < 0
                                        or (1 << 64) - (1 << 31) <= imm < (1 << 64)):
                    # Alignment keeps the upper half: stays in the window.
                    return [self.format(insn.prefixes, mn, ops, addr32)]
            if is_register(src):
                r = reg_name(src)
                if r in _TO32:
                    src = "%" + _TO32[r]
                elif r not in _GPR32:
                    raise self.error(insn.lineno, insn.text,
                                     f"cannot write %{r} to the stack pointer")
            body = self.format(insn.prefixes, stem + "l", [src, "%esp"], addr32)
        else:
            body = self.format(insn.prefixes, mn, ops, addr32)
        return self.group([body, _LEA_RSP])

    # -- verifier rule string-instruction -------------------------------------------

    def string_op(self, insn: Insn, uses: tuple[str, ...]) -> list[str]:
        for op in insn.operands:
            if op.replace(" ", "").replace("\t", "").lower() not in _STRING_OPERANDS:
                raise self.error(insn.lineno, insn.text,
                                 f"string instruction operand {op} is not (%rsi)/(%rdi)")
        for p in insn.prefixes:
            if p not in _REP_PREFIXES:
                raise self.error(insn.lineno, insn.text,
                                 f"prefix `{p}` on a string instruction")
        lines = []
        for reg in uses:
            r32 = _TO32[reg]
            lines += [f"\tmovl\t%{r32}, %{r32}", f"\tleaq\t({_BASE},%{reg}), %{reg}"]
        mn = insn.mnemonic
        if mn in ("movsd", "cmpsd") and not insn.operands:
            mn = mn[:-1] + "l"  # the dword string forms; gas warns about the 'd' spelling
        lines.append(self.format(insn.prefixes, mn, insn.operands, False))
        return self.group(lines)

    # -- verifier rules runtime-call, prefixes, indirect-branch, return, bundle ------

    def drop_branch_prefixes(self, insn: Insn, what: str) -> None:
        """Hints (bnd, notrack) go: the verifier takes no legacy prefix on a branch."""
        for p in insn.prefixes:
            if p not in _BRANCH_DROP_PREFIXES:
                raise self.error(insn.lineno, insn.text, f"prefix `{p}` on {what}")

    def call_direct(self, target: str) -> list[str]:
        if not self.cfi:
            return [f"\tcall\t{target}"]
        return self.call_group([f"\tcall\t{target}"], _CALL_DIRECT_LEN)

    def call_group(self, body: list[str], length: int) -> list[str]:
        """A locked group that ends with a call that must end a bundle.

        By default the group is a whole bundle. With align_calls, the nops before it
        are `.space` with an expression the assembler evaluates while it lays out the
        section (so it also settles jump sizes that the padding changes): the bytes
        from the section's bundle-aligned start label to the end of the call are a
        multiple of the bundle size. tmebox.toolchain.cc checks the object.
        """
        anchor = self.anchors.get(self.section)
        if not self.align_calls or anchor is None:
            return self.group([*_nop_fill(BUNDLE_SIZE - length), *body])
        return [f"\t.space\t(-(. - {anchor} + {length})) & {BUNDLE_SIZE - 1}, 0x90",
                *self.group(body)]

    def branch(self, insn: Insn) -> list[str]:
        mn = insn.mnemonic
        is_call = mn.startswith("call")
        ops = insn.operands
        if len(ops) != 1:
            raise self.error(insn.lineno, insn.text, "branch needs exactly one operand")
        op = ops[0]
        self.drop_branch_prefixes(insn, "a branch")
        indirect = op.startswith("*")
        target = op[1:].strip() if indirect else op
        if not indirect and ("(" in target or target.startswith("%")):
            raise self.error(insn.lineno, insn.text,
                             "indirect branch operands must be written with `*`")
        if not indirect:
            if is_call:
                return self.call_direct(target)
            return [self.format([], mn, [target], False)]
        if is_register(target):
            r = reg_name(target)
            if r not in _TO32:
                raise self.error(insn.lineno, insn.text,
                                 f"indirect branch through %{r}: need a 64-bit register")
            pre: list[str] = []
            src, addr32 = target, False
        else:
            pre, src, addr32 = self.rewrite_mem(insn, target)
        if not self.cfi:
            return pre + [self.format([], mn, ["*" + src], addr32)]
        if src != _SCRATCH:
            pre.append(self.format([], "movq", [src, _SCRATCH], addr32))
        return pre + self.masked_branch("call" if is_call else "jmp")

    def masked_branch(self, kind: str) -> list[str]:
        lines = [f"\tandl\t${BUNDLE_MASK}, {_SCRATCH32}", f"\torq\t{_BASE}, {_SCRATCH}",
                 f"\t{kind}\t*{_SCRATCH}"]
        if kind == "call":
            return self.call_group(lines, _MASKED_BRANCH_LEN)
        return self.group(lines)

    def ret(self, insn: Insn) -> list[str]:
        # `rep ret` is an old AMD branch-predictor idiom: dropped like the hints.
        insn.prefixes = [p for p in insn.prefixes if p not in ("rep", "repz")]
        self.drop_branch_prefixes(insn, "ret")
        if insn.operands:
            raise self.error(insn.lineno, insn.text,
                             "`ret $N` moves %rsp by up to 64 KiB without touching memory")
        if not self.cfi:
            return ["\tret"]
        # Pushing the masked address back and returning through it keeps the CPU's
        # return-address predictor, which `jmp *%r11` loses (docs/design.md).
        return self.group([f"\tpopq\t{_SCRATCH}", f"\tandl\t${BUNDLE_MASK}, {_SCRATCH32}",
                           f"\torq\t{_BASE}, {_SCRATCH}", f"\tpushq\t{_SCRATCH}", "\tret"])


def _to64(reg32: str | None) -> str | None:
    return None if reg32 is None else _TO64[reg32]


def _mentions(op: str, family: frozenset[str]) -> bool:
    if "%" not in op:
        return False
    return any(tok.split(")")[0].split(",")[0].strip().lower() in family
               for tok in op.split("%")[1:])


def rewrite_assembly(text: str, *, isolation: str, source: str = "<asm>",
                     align_calls: bool = False, level: str = CPU_LEVELS[0]) -> str:
    """Instrument AT&T x86-64 assembly `text` for the sandbox `isolation` mode.

    code+data: by default each call group is one whole bundle; align_calls pads it
    only as far as needed for its call to end a bundle, which is right only if the
    assembler places every code section on a bundle boundary (the caller must check).
    level: the CPU level (abi.CPU_LEVELS) whose instructions the unit may use.
    Raises RewriteError (naming `source`:line) for input it cannot make safe.
    """
    return _Rewriter(text, isolation, source, align_calls, level).run()


_USAGE = "usage: python -m tmebox.toolchain.rewriter --isolation {data,code+data} IN.s -o OUT.s"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; '-' means stdin/stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    isolation = None
    inp = None
    outp = None
    while args:
        a = args.pop(0)
        if a in ("-h", "--help"):
            print(_USAGE)
            return 0
        if a == "--isolation" and args:
            isolation = args.pop(0)
        elif a.startswith("--isolation="):
            isolation = a.split("=", 1)[1]
        elif a == "-o" and args:
            outp = args.pop(0)
        elif inp is None and (a == "-" or not a.startswith("-")):
            inp = a
        else:
            print(f"{_USAGE}\nerror: unexpected argument {a!r}", file=sys.stderr)
            return 2
    if isolation is None or inp is None or outp is None:
        print(f"{_USAGE}\nerror: --isolation, IN.s and -o OUT.s are required", file=sys.stderr)
        return 2
    try:
        if inp == "-":
            text = sys.stdin.read()
        else:
            with open(inp, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        result = rewrite_assembly(text, isolation=isolation, source=inp)
        if outp == "-":
            sys.stdout.write(result)
        else:
            with open(outp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(result)
    except RewriteError as e:
        print(f"tmebox rewrite: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"tmebox rewrite: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
