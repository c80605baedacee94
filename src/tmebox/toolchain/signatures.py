"""C signatures of functions, read from an object's DWARF debug information.

`tmebox cc` compiles with -g so that the link step can record exports' and imports'
signatures in `.tmebox_info` (docs/embedding.md). Typedefs, const/volatile and enums are
resolved to the scalar underneath; anything that does not travel in one register
(structs and unions by value, long double, __int128, varargs) is unsupported, with the
reason kept so that the error can name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import DWARFError, ELFError, ELFRelocationError
from elftools.dwarf.die import DIE
from elftools.elf.elffile import ELFFile

from tmebox.errors import ToolchainError
from tmebox.trusted.signature import Signature, ValType

__all__ = ["Found", "Unsupported", "read_signatures"]

_ATE_BOOLEAN, _ATE_FLOAT, _ATE_SIGNED, _ATE_SIGNED_CHAR = 0x2, 0x4, 0x5, 0x6
_ATE_UNSIGNED, _ATE_UNSIGNED_CHAR, _ATE_UTF = 0x7, 0x8, 0x10
_INTS = {(True, 1): ValType.I8, (True, 2): ValType.I16, (True, 4): ValType.I32,
         (True, 8): ValType.I64, (False, 1): ValType.U8, (False, 2): ValType.U16,
         (False, 4): ValType.U32, (False, 8): ValType.U64}
_TRANSPARENT = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
                "DW_TAG_restrict_type", "DW_TAG_atomic_type")


class Unsupported(Exception):
    """A C type that cannot cross the boundary as one register."""


@dataclass(frozen=True)
class Found:
    """What an object's debug information says about its functions, by name."""

    definitions: dict[str, Signature | str]  # a signature, or why there is none
    declarations: dict[str, Signature | str]


def read_signatures(obj: Path) -> Found:
    """Signatures of the functions defined and declared in obj (empty without -g)."""
    defs: dict[str, Signature | str] = {}
    decls: dict[str, Signature | str] = {}
    try:
        with obj.open("rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return Found(defs, decls)
            try:
                dwarf, relocated = elf.get_dwarf_info(), True
                cus = list(dwarf.iter_CUs())
            except ELFRelocationError:
                # pyelftools cannot apply some relocations (TLS variables' DTPOFF32). Without
                # them only names stored inline can be trusted: tmebox cc compiles with
                # -fno-merge-debug-strings so that all of them are.
                dwarf, relocated = elf.get_dwarf_info(relocate_dwarf_sections=False), False
                cus = list(dwarf.iter_CUs())
            for cu in cus:
                for die in cu.get_top_DIE().iter_children():
                    if die.tag != "DW_TAG_subprogram" or "DW_AT_name" not in die.attributes:
                        continue
                    if not relocated and die.attributes["DW_AT_name"].form != "DW_FORM_string":
                        continue
                    name = die.attributes["DW_AT_name"].value.decode()
                    try:
                        sig: Signature | str = _signature(die)
                    except Unsupported as e:
                        sig = str(e)
                    except ValueError as e:  # more arguments than registers
                        sig = str(e)
                    table = decls if "DW_AT_declaration" in die.attributes else defs
                    table[name] = sig
    except (OSError, ELFError, DWARFError) as e:
        raise ToolchainError(f"{obj}: cannot read its debug information: {e}") from None
    return Found(defs, decls)


def _signature(die: DIE) -> Signature:
    params = []
    for child in die.iter_children():
        if child.tag == "DW_TAG_unspecified_parameters":
            raise Unsupported("variadic (...) parameters")
        if child.tag == "DW_TAG_formal_parameter":
            t = _type(child)
            if t is ValType.VOID:
                raise Unsupported("a void parameter")
            params.append(t)
    return Signature(tuple(params), _type(die))


def _type(die: DIE) -> ValType:
    """The ValType of die's DW_AT_type (absent: void)."""
    seen = 0
    while True:
        if "DW_AT_type" not in die.attributes:
            return ValType.VOID
        die = die.get_DIE_from_attribute("DW_AT_type")
        seen += 1
        if seen > 64:
            raise Unsupported("a type chain too long to follow")
        if die.tag in _TRANSPARENT:
            continue
        if die.tag == "DW_TAG_pointer_type":
            return ValType.PTR
        if die.tag == "DW_TAG_enumeration_type":
            size = die.attributes["DW_AT_byte_size"].value
            if "DW_AT_type" in die.attributes:
                continue  # the enum's underlying integer type
            return _INTS.get((True, size)) or _unsupported(f"a {size}-byte enum")
        if die.tag == "DW_TAG_base_type":
            return _base(die)
        kind = str(die.tag).removeprefix("DW_TAG_").removesuffix("_type")
        name = die.attributes.get("DW_AT_name")
        raise Unsupported(f"{kind} {name.value.decode() if name else '(anonymous)'} by value")


def _base(die: DIE) -> ValType:
    size = die.attributes["DW_AT_byte_size"].value
    enc = die.attributes["DW_AT_encoding"].value
    name = die.attributes["DW_AT_name"].value.decode()
    if enc == _ATE_BOOLEAN and size == 1:
        return ValType.BOOL
    if enc == _ATE_FLOAT and size in (4, 8):
        return ValType.F32 if size == 4 else ValType.F64
    if enc in (_ATE_SIGNED, _ATE_SIGNED_CHAR, _ATE_UNSIGNED, _ATE_UNSIGNED_CHAR, _ATE_UTF):
        t = _INTS.get((enc in (_ATE_SIGNED, _ATE_SIGNED_CHAR), size))
        if t is not None:
            return t
    return _unsupported(name)


def _unsupported(what: str) -> ValType:
    raise Unsupported(what)
