"""Test helpers: assemble snippets and link minimal tmebox images with GNU as + ld.

Independent of the real toolchain (tmebox.toolchain.cc) on purpose: the image reader and the
verifier are tested against images whose every byte the test controls.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tmebox.trusted import abi

CODE_OFFSET = abi.RT_PAGE_SIZE  # snippets are linked right after the runtime page
SNIPPET_IMAGE_SIZE = 0x20000  # image size assumed for snippets (code + data)

# Snippets: runtime page at 0, .text at 0x1000; `inside_data`/`outside_image` are rip targets.
SNIPPET_LD = f"""
SECTIONS {{
  . = 0;
  .tmebox_rt : {{ . = {abi.RT_PAGE_SIZE:#x}; }}
  .text {CODE_OFFSET:#x} : {{ *(.text) }}
  /DISCARD/ : {{ *(.note.*) }}
}}
__tmebox_rt_syscall = {abi.RT_SYSCALL_OFFSET:#x};
__tmebox_rt_exit = {abi.RT_EXIT_OFFSET:#x};
__tmebox_rt_other = 0x40;
inside_data = 0x18000;
outside_image = {SNIPPET_IMAGE_SIZE:#x};
"""

# The image layout of docs/design.md: R+X (runtime page, text), stack gap, R+W (everything else).
IMAGE_LD = f"""
ENTRY(_start)
PHDRS {{
  code PT_LOAD FLAGS(5);
  data PT_LOAD FLAGS(6);
  dyn PT_DYNAMIC FLAGS(6);
  tls PT_TLS FLAGS(4);
}}
SECTIONS {{
  . = 0;
  .tmebox_rt : {{ KEEP(*(.tmebox_rt)) }} :code
  .text : {{ *(.text .text.*) }} :code
  . = ALIGN({abi.PAGE_SIZE:#x});
  __tmebox_stack_bottom = .;
  . += {abi.DEFAULT_STACK_SIZE:#x};
  __tmebox_stack_top = .;
  .rodata : {{ *(.rodata .rodata.*) }} :data
  .dynsym : {{ *(.dynsym) }} :data
  .dynstr : {{ *(.dynstr) }} :data
  .hash : {{ *(.hash) }} :data
  .gnu.hash : {{ *(.gnu.hash) }} :data
  .rela.dyn : {{ *(.rela.*) }} :data
  .dynamic : {{ *(.dynamic) }} :data :dyn
  .got : {{ *(.got) *(.got.plt) }} :data
  .data : {{ *(.data .data.*) }} :data
  .tdata : {{ *(.tdata .tdata.*) }} :data :tls
  .tbss : {{ *(.tbss .tbss.*) }} :data :tls
  .bss : {{ *(.bss .bss.*) *(COMMON) }} :data
  .tmebox_info 0 : {{ KEEP(*(.tmebox_info)) }} :NONE
  /DISCARD/ : {{ *(.note.*) *(.interp) }}
}}
"""

# A crt of sorts: the runtime page, the thread-pointer word and a TLS variable.
IMAGE_RUNTIME_ASM = """
    .section .tmebox_rt,"ax",@progbits
    .globl __tmebox_rt_syscall, __tmebox_rt_exit
__tmebox_rt_syscall:
    .fill 32, 1, 0xcc
__tmebox_rt_exit:
    .fill 4064, 1, 0xcc
    .data
    .balign 8
    .globl __tmebox_tp
__tmebox_tp:
    .quad 0
self_pointer:
    .quad self_pointer
    .section .tdata,"awT",@progbits
tls_word:
    .quad 42
"""


def run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")


def assemble(asm: str, workdir: Path, name: str = "snippet") -> bytes:
    """The bytes of `asm`'s .text, linked at CODE_OFFSET (Intel syntax unless it says so)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{name}.s").write_text(".intel_syntax noprefix\n" + asm + "\n")
    (workdir / "snippet.ld").write_text(SNIPPET_LD)
    run(["as", "--64", "-o", f"{name}.o", f"{name}.s"], workdir)
    run(["ld", "-T", "snippet.ld", "-o", f"{name}.elf", f"{name}.o"], workdir)
    run(["objcopy", "-O", "binary", "--only-section=.text", f"{name}.elf", f"{name}.bin"],
        workdir)
    return (workdir / f"{name}.bin").read_bytes()


def link_image(asm: str, workdir: Path, *, isolation: str = "code+data",
               info: dict | None = None, name: str = "prog") -> Path:
    """Link `asm` (must define _start) into a tmebox image at workdir/<name>.box."""
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / f"{name}.s"
    src.write_text(".intel_syntax noprefix\n" + asm + "\n" + IMAGE_RUNTIME_ASM)
    (workdir / "image.ld").write_text(IMAGE_LD)
    run(["as", "--64", "-o", f"{name}.o", src.name], workdir)
    elf = workdir / f"{name}.elf"
    run(["ld", "-pie", "--no-dynamic-linker", "-z", "text", "-z", "norelro", "--hash-style=sysv",
         "-T", "image.ld", "-o", elf.name, f"{name}.o"], workdir)
    symbols = read_symbols(elf)
    obj = {"format": abi.IMAGE_FORMAT, "isolation": isolation,
           "exports": {"_start": symbols["_start"]}, "stack_size": abi.DEFAULT_STACK_SIZE,
           "entry": symbols["_start"], "tp_slot": symbols[abi.TP_SYMBOL]}
    obj.update(info or {})
    (workdir / f"{name}.json").write_text(json.dumps(obj))
    out = workdir / f"{name}.box"
    run(["objcopy", "--add-section", f"{abi.INFO_SECTION}={name}.json",
         "--set-section-flags", f"{abi.INFO_SECTION}=readonly", elf.name, out.name], workdir)
    return out


def read_symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in map(str.split, out.splitlines())
            if len(parts) == 3}
