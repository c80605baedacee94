"""Hand-assembled sandbox images for testing the runtime without the C toolchain.

`assemble(body, data)` wraps body in an image laid out as docs/design.md says:
page 0 is the runtime page, `_start` parks and then calls `main` and exits
with its result, a 64 KiB stack sits between code and data. Every global
label of body is exported; `reloc_*` labels in data mark pointer slots that
hold `.quad target - __img` (an image offset) and get relocated.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tmebox.runtime.loader import ImagePlan

STACK = 64 << 10

PRELUDE = r"""
    .text
__img:
rt_syscall:
    .fill 32, 1, 0xcc
rt_exit:
    .fill 4064, 1, 0xcc
    .macro bcall target
    .p2align 5
    .skip 27, 0x90
    call \target
    .endm
    .macro rtcall
    bcall rt_syscall
    .endm
    .p2align 5
_start:
    movl $0x7100, %eax
    rtcall
    bcall main
    movl %eax, %edi
    movl $231, %eax
    rtcall
    ud2
"""

EPILOGUE = """
code_end:
    .p2align 12
stack_bottom:
    .fill {stack}, 1, 0
stack_top:
data_start:
tp_slot:
    .quad 0
{data}
    .p2align 3
data_end:
"""


def assemble(body: str, data: str = "", isolation: str = "data", bss: int = 0,
             name: str = "asm-test") -> ImagePlan:
    src = PRELUDE + body + EPILOGUE.format(stack=STACK, data=data)
    with tempfile.TemporaryDirectory() as d:
        s, o, e, b = Path(d, "t.s"), Path(d, "t.o"), Path(d, "t.elf"), Path(d, "t.bin")
        s.write_text(src)
        r = subprocess.run(["as", "--64", "-o", str(o), str(s)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"as failed:\n{r.stderr}")
        # ld resolves the calls to global labels (as leaves them as relocations).
        subprocess.run(["ld", "-o", str(e), "-Ttext=0", "-e", "0", str(o)], check=True,
                       capture_output=True, text=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(e), str(b)], check=True)
        out = subprocess.run(["nm", str(e)], check=True, capture_output=True, text=True).stdout
        blob = b.read_bytes()
    syms: dict[str, int] = {}
    glob: set[str] = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
            if parts[1].isupper():
                glob.add(parts[2])
    code_end = (syms["code_end"] + 4095) & ~4095
    data_start, data_end = syms["data_start"], syms["data_end"]
    return ImagePlan(
        name=name, isolation=isolation, code=blob[:code_end], data=blob[data_start:data_end],
        data_start=data_start, image_end=data_end + bss,
        relocs=tuple(v for k, v in syms.items() if k.startswith("reloc_")),
        stack_bottom=syms["stack_bottom"], stack_top=syms["stack_top"], entry=syms["_start"],
        tp_slot=syms["tp_slot"],
        exports={k: syms[k] for k in glob if 4096 <= syms[k] < syms["code_end"]},
    )


def machine_code(body: str) -> bytes:
    """body assembled on its own as position-independent bytes (for code the host runs)."""
    with tempfile.TemporaryDirectory() as d:
        s, o, b = Path(d, "t.s"), Path(d, "t.o"), Path(d, "t.bin")
        s.write_text(".text\n" + body + "\n")
        r = subprocess.run(["as", "--64", "-o", str(o), str(s)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"as failed:\n{r.stderr}")
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(o), str(b)], check=True)
        return b.read_bytes()
