"""What a backend needs to instantiate an image, and the initial stack of `_start`.

`ImagePlan` is the runtime's view of a verified image: code bytes, the data
template, relocation slots, the stack range and the symbols the runtime uses.
`plan_from_image()` derives it from a parsed `tmebox.trusted.image.Image`; tests and
benchmarks may also build one by hand from assembled code.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from tmebox.errors import ImageError
from tmebox.runtime.layout import WindowLayout
from tmebox.trusted import abi
from tmebox.trusted.image import Image
from tmebox.trusted.record import Record, field
from tmebox.trusted.signature import Signature

__all__ = ["MAX_ARGS_BYTES", "ImagePlan", "initial_stack", "plan_from_image"]

AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ = 0, 3, 4, 5, 6
AT_ENTRY, AT_HWCAP, AT_SECURE, AT_RANDOM = 9, 16, 23, 25
MAX_ARGS_BYTES = 128 << 10  # argv + envp strings; Linux allows more, sandboxes need less


class ImagePlan(Record, frozen=True):
    """A sandbox image as the runtime instantiates it (all offsets are image offsets)."""

    name: str
    isolation: str
    code: bytes  # [0, len(code)): runtime page (overwritten by the runtime), then code
    data: bytes  # initial bytes of [data_start, data_start + len(data)); the rest is bss
    data_start: int
    image_end: int  # end of bss
    relocs: tuple[int, ...]  # R_X86_64_RELATIVE slots; data holds their addends
    stack_bottom: int
    stack_top: int
    entry: int
    tp_slot: int
    exports: Mapping[str, int]
    phdrs: bytes = b""  # the program header table, for AT_PHDR
    phent: int = 56
    digest: str = field(default="", compare=False)
    signatures: Mapping[str, Signature] = field(default_factory=dict)  # of exports
    imports: tuple[tuple[str, Signature], ...] = ()  # runtime-call index -> host function
    data_symbols: Mapping[str, int] = field(default_factory=dict)
    unsupported: Mapping[str, str] = field(default_factory=dict)  # export -> why untyped

    def __post_init__(self) -> None:
        if self.isolation not in abi.ISOLATION_MODES:
            raise ImageError(f"{self.name}: unknown isolation mode {self.isolation!r}")
        if len(self.code) < abi.RT_PAGE_SIZE:
            raise ImageError(f"{self.name}: code is smaller than the runtime page")
        for off in self.relocs:
            if not self.data_start <= off <= self.data_start + len(self.data) - 8:
                raise ImageError(f"{self.name}: relocation at {off:#x} is outside the "
                                 f"initialised data")
        for what, off in (("entry", self.entry), *self.exports.items()):
            if not abi.RT_PAGE_SIZE <= off < len(self.code):
                raise ImageError(f"{self.name}: {what} at {off:#x} is not in the code")
        if not self.data_start <= self.tp_slot <= self.image_end - 8:
            raise ImageError(f"{self.name}: {abi.TP_SYMBOL} at {self.tp_slot:#x} is not in "
                             f"the data")
        if not self.digest:
            h = hashlib.sha256(self.code)
            h.update(self.data)
            object.__setattr__(self, "digest", h.hexdigest())

    @property
    def phnum(self) -> int:
        return len(self.phdrs) // self.phent if self.phent else 0

    def layout(self) -> WindowLayout:
        return WindowLayout.for_image(len(self.code), self.data_start, self.image_end,
                                      self.stack_bottom, self.stack_top, self.name)


def plan_from_image(image: Image) -> ImagePlan:
    """The runtime's view of a parsed (and verified) image: relocation addends pre-applied."""
    data = bytearray(image.data.data)
    for off, addend in image.relocations:
        at = off - image.data.offset
        data[at:at + 8] = struct.pack("<q", addend)
    return ImagePlan(
        name=image.name, isolation=image.isolation, code=image.code.data, data=bytes(data),
        data_start=image.data.offset, image_end=image.size,
        relocs=tuple(off for off, _ in image.relocations),
        stack_bottom=image.symbols["__tmebox_stack_bottom"],
        stack_top=image.symbols["__tmebox_stack_top"], entry=image.entry,
        tp_slot=image.info.tp_slot, exports=dict(image.exports), phdrs=image.phdrs,
        phent=len(image.phdrs) // image.phnum if image.phnum else 56, digest=image.sha256,
        signatures=dict(image.info.signatures), imports=image.info.imports,
        data_symbols=dict(image.info.data_symbols), unsupported=dict(image.info.unsupported),
    )


def _host_hwcap() -> int:
    raw = Path("/proc/self/auxv").read_bytes()
    for i in range(0, len(raw) - 15, 16):
        key, value = struct.unpack_from("<QQ", raw, i)
        if key == AT_HWCAP:
            return value
    return 0


_HWCAP = _host_hwcap()


def initial_stack(plan: ImagePlan, layout: WindowLayout, base: int, argv: Sequence[str | bytes],
                  envp: Sequence[str | bytes], random16: bytes) -> tuple[int, bytes]:
    """The bytes at the top of the main stack and the window offset %rsp starts at.

    Linux's layout for `_start`: argc, argv[], NULL, envp[], NULL, auxv pairs,
    then (higher up) the strings, the program headers and AT_RANDOM's bytes.
    """
    top = layout.stack_top
    strings = [s.encode() if isinstance(s, str) else bytes(s) for s in (*argv, *envp)]
    blob = b"".join(s + b"\0" for s in strings)
    if len(blob) > MAX_ARGS_BYTES:
        raise ImageError(f"{plan.name}: argv and envp take {len(blob)} bytes, more than "
                         f"{MAX_ARGS_BYTES}")
    # Everything above the pointer block, from the top down.
    tail = bytearray()
    tail += random16
    tail += plan.phdrs
    tail += blob
    tail += bytes(-len(tail) % 16)
    tail_lo = top - len(tail)
    random_at = tail_lo
    phdr_at = random_at + 16
    str_at = phdr_at + len(plan.phdrs)
    ptrs = []
    for s in strings:
        ptrs.append(base + str_at)
        str_at += len(s) + 1
    n_arg = len(argv)
    auxv = [AT_PHDR, base + phdr_at, AT_PHENT, plan.phent, AT_PHNUM, plan.phnum,
            AT_PAGESZ, abi.PAGE_SIZE, AT_RANDOM, base + random_at,
            AT_ENTRY, base + layout.code_lo + plan.entry, AT_HWCAP, _HWCAP, AT_SECURE, 0,
            AT_NULL, 0]
    words = [n_arg, *ptrs[:n_arg], 0, *ptrs[n_arg:], 0, *auxv]
    if len(words) % 2:
        words.append(0)  # keeps %rsp 16-aligned at argc
    head = struct.pack(f"<{len(words)}Q", *words)
    rsp = tail_lo - len(head)
    if rsp - 4096 < layout.stack_bottom:
        size = layout.stack_top - layout.stack_bottom
        raise ImageError(f"{plan.name}: arguments do not fit the {size} byte stack")
    return rsp, head + bytes(tail)
