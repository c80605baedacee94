"""The syntax of GNU as's AT&T assembly, as the rewriter needs it: statements, labels and
operands. No policy here: what to do with an instruction is tmebox.toolchain.rewriter's.

Plain classes with __slots__, not dataclasses: importing dataclasses costs more than a whole
typical rewrite, and the libc build starts one interpreter per file.
"""

from __future__ import annotations

__all__ = ["LABEL_CHARS", "SEGMENT_REGS", "Insn", "Mem", "function_symbols", "int_value",
           "is_register", "parse_mem", "reg_name", "split_label", "split_operands",
           "split_segment", "split_statements", "symbols"]

SEGMENT_REGS = frozenset(("cs", "ds", "es", "fs", "gs", "ss"))
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.$@")


class Mem:
    """A parsed memory operand `seg:disp(base,index,scale)`; registers without '%'."""

    __slots__ = ("seg", "disp", "base", "index", "scale")

    def __init__(self, seg: str | None, disp: str, base: str | None, index: str | None,
                 scale: str | None) -> None:
        self.seg = seg
        self.disp = disp
        self.base = base
        self.index = index
        self.scale = scale

    def with_regs(self, base: str | None, index: str | None) -> str:
        """The operand text with `base`/`index` in place of its own registers."""
        if base is None and index is None:
            return self.disp
        inner = f"%{base}" if base else ""
        if index:
            inner += f",%{index}" + (f",{self.scale}" if self.scale else "")
        return f"{self.disp}({inner})"


class Insn:
    """One instruction statement: prefixes, lower-case mnemonic, operand texts."""

    __slots__ = ("prefixes", "mnemonic", "operands", "lineno", "text")

    def __init__(self, prefixes: list[str], mnemonic: str, operands: list[str], lineno: int,
                 text: str) -> None:
        self.prefixes = prefixes
        self.mnemonic = mnemonic
        self.operands = operands
        self.lineno = lineno
        self.text = text


def split_segment(op: str) -> tuple[str | None, str]:
    """'%fs:8(%rax)' -> ('fs', '8(%rax)'); operands without a segment -> (None, op)."""
    if op.startswith("%"):
        colon = op.find(":")
        if colon > 0:
            seg = op[1:colon].strip().lower()
            if seg in SEGMENT_REGS:
                return seg, op[colon + 1:].strip()
    return None, op


def split_label(stmt: str) -> tuple[str, str] | None:
    """'  foo: movl ...' -> ('foo', ' movl ...'); None if the statement has no label."""
    if ":" not in stmt:  # most statements; keeps the common path cheap
        return None
    s = stmt.lstrip()
    if not s:
        return None
    if s[0] == '"':
        i = s.find('"', 1) + 1
        if i == 0:
            return None
    else:
        i = 0
        n = len(s)
        while i < n and s[i] in LABEL_CHARS:
            i += 1
        if i == 0 or (s[0].isdigit() and not s[:i].isdigit()):
            return None
    name = s[:i]
    j = i
    n = len(s)
    while j < n and s[j] in " \t":
        j += 1
    if j < n and s[j] == ":" and not s.startswith("::", j):
        return name, s[j + 1:]
    return None


def function_symbols(text: str) -> set[str]:
    """Names declared with `.type NAME, @function` (or %function, STT_FUNC, ifunc)."""
    out: set[str] = set()
    pos = 0
    while True:
        i = text.find(".type", pos)
        if i < 0:
            return out
        eol = text.find("\n", i)
        eol = len(text) if eol < 0 else eol
        rest = text[i + 5:eol]
        pos = eol
        if rest[:1] in (" ", "\t"):
            name, _, kind = rest.partition(",")
            if "function" in kind or "STT_FUNC" in kind:
                out.add(name.strip().strip('"'))


def symbols(expr: str) -> list[str]:
    """The symbol names in an expression such as `.L3-.L2` or `foo+8` (not `1f`, `%rax`)."""
    names = []
    i = 0
    n = len(expr)
    while i < n:
        c = expr[i]
        if c in LABEL_CHARS and not c.isdigit() and (i == 0 or expr[i - 1] != "%"):
            j = i
            while j < n and expr[j] in LABEL_CHARS:
                j += 1
            names.append(expr[i:j].split("@", 1)[0])
            i = j
        elif c in LABEL_CHARS:  # a number or a register name: skip it whole
            while i < n and expr[i] in LABEL_CHARS:
                i += 1
        else:
            i += 1
    return names


def parse_mem(op: str) -> Mem:
    seg, op = split_segment(op)
    op = op.strip()
    if op.endswith(")"):
        depth = 0
        i = len(op) - 1
        while i >= 0:
            c = op[i]
            if c == ")":
                depth += 1
            elif c == "(":
                depth -= 1
                if depth == 0:
                    break
            i -= 1
        inner = op[i + 1:-1].strip()
        if i >= 0 and (inner.startswith("%") or inner.startswith(",")):
            parts = [p.strip() for p in inner.split(",")]
            if len(parts) > 3:
                raise ValueError(f"malformed memory operand {op!r}")
            regs: list[str | None] = []
            for p in parts[:2]:
                if not p:
                    regs.append(None)
                elif p.startswith("%"):
                    regs.append(p[1:].strip().lower())
                else:
                    raise ValueError(f"malformed register {p!r} in memory operand")
            while len(regs) < 2:
                regs.append(None)
            scale = parts[2] if len(parts) == 3 and parts[2] else None
            return Mem(seg, op[:i].strip(), regs[0], regs[1], scale)
    return Mem(seg, op, None, None, None)


def split_operands(s: str) -> list[str]:
    if not s:
        return []
    if "(" not in s and '"' not in s:
        return [p.strip() for p in s.split(",")]
    out: list[str] = []
    depth = 0
    start = 0
    for i, c in enumerate(s):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(s[start:i].strip())
            start = i + 1
    out.append(s[start:].strip())
    return out


def is_register(op: str) -> bool:
    return op.startswith("%") and ":" not in op


def reg_name(op: str) -> str:
    """'%rax' -> 'rax'; '%st(1)' -> 'st'."""
    name = op[1:].strip().lower()
    p = name.find("(")
    return name[:p].strip() if p >= 0 else name



def split_statements(line: str) -> tuple[list[str], bool]:
    """Split at ';' outside strings; drop '#' and '/* */' comments."""
    stmts: list[str] = []
    cur: list[str] = []
    i = 0
    n = len(line)
    quote = False
    while i < n:
        c = line[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < n:
                cur.append(line[i + 1])
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
            cur.append(c)
        elif c == "#":
            break
        elif c == "/" and line.startswith("/*", i):
            end = line.find("*/", i + 2)
            if end < 0:
                stmts.append("".join(cur))
                return [s for s in stmts if s.strip()], True
            cur.append(" ")
            i = end + 1
        elif c == ";":
            stmts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    stmts.append("".join(cur))
    return [s for s in stmts if s.strip()], False


def int_value(text: str) -> int | None:
    """An integer literal as GNU as reads it (0x.., 0.., decimal), else None."""
    try:
        return int(text.strip(), 0)
    except ValueError:
        return None
