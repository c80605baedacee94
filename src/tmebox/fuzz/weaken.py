"""Deliberately weakened verifiers: the escape fuzzer's self-test (docs/escape-fuzzer.md).

Each weakening puts one hole the verifier once had back into this process's verifier, for the
length of a `with` block: the fuzzer must then find an escape, which shows that its silence
against the real verifier means something. The per-instruction verdict cache is emptied on the
way in and out, so no verdict of one verifier is taken for the other's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import iced_x86 as ix

from tmebox.trusted import rules, scan

__all__ = ["WEAKENINGS", "weakened"]


def _esp_by_shape(ins: ix.Instruction) -> bool:
    # The old stack-pointer rule: any instruction whose destination is the register %esp counts
    # as a zero-extending write, bsf/bsr/cmpxchg/cmov (which may leave it unwritten) included.
    return ins.op0_kind == ix.OpKind.REGISTER and ins.op0_register == ix.Register.ESP


def _prefixes_before_rex_only(x: rules.Insn) -> None:
    # The old prefix scan stopped at the first non-legacy byte: prefixes after REX went unseen.
    rules.rule_prefixes(dataclasses.replace(x, rex_then_prefix=False))


def _decodes_as_iced_does(x: rules.Insn) -> None:
    # Without the AMD comparison: what iced-x86's default (Intel) decoding says is believed.
    try:
        rules.rule_decodes(x)
    except rules.Reject as e:
        if "AMD" not in str(e):
            raise


def _swap_checks() -> dict[str, object]:
    swap = {rules.rule_prefixes: _prefixes_before_rex_only,
            rules.rule_decodes: _decodes_as_iced_does}
    return {"CHECKS": tuple(swap.get(check, check) for check in rules.CHECKS)}


# name -> (what it re-opens, the rules-module attributes it replaces)
WEAKENINGS: dict[str, tuple[str, Callable[[], dict[str, object]]]] = {
    "esp-by-shape": ("a 32-bit write to %esp is any instruction with %esp as its destination",
                     lambda: {"writes_all_of_esp": _esp_by_shape}),
    "prefix-after-rex": ("legacy prefixes after REX are not seen, AMD's decoding is not compared",
                         _swap_checks),
    "rip-bit-string": ("bt/bts/btr/btc with a register bit offset on a %rip operand pass",
                       lambda: {"_BIT_OFFSET_FORMS": frozenset()}),
}


def _clear_verdicts() -> None:
    for kinds in scan._KINDS.values():
        kinds.clear()


@contextlib.contextmanager
def weakened(name: str) -> Iterator[str]:
    """Run the block with weakening `name`; yields what it re-opens."""
    if name not in WEAKENINGS:
        raise KeyError(f"unknown weakening {name!r}; choose one of {', '.join(WEAKENINGS)}")
    what, replacements = WEAKENINGS[name]
    new = replacements()
    saved = {attr: getattr(rules, attr) for attr in new}
    _clear_verdicts()
    try:
        for attr, value in new.items():
            setattr(rules, attr, value)
        yield what
    finally:
        for attr, value in saved.items():
            setattr(rules, attr, value)
        _clear_verdicts()
