"""The positional checks: one linear pass over the code, then every way in.

capstone decodes the whole code linearly in one C call (boundaries only); each distinct
instruction is classified once by rules.py (iced-x86, which must find the same length) and
cached by its bytes. This pass then checks what depends on position: groups and bundles
(groups.py), %rip-relative targets, direct branch targets and entry points. Equal lengths at
every start mean both decoders see the same instruction stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import iced_x86 as ix
import numpy as np

from tmebox.trusted import abi, decode
from tmebox.trusted.errors import VerificationError
from tmebox.trusted.groups import GROUPS, Role, group_rule
from tmebox.trusted.image import CpuLevel, Image, Isolation
from tmebox.trusted.rules import PLAIN, Kind, Reject, classify
from tmebox.trusted.verdict import Verdict

__all__ = ["verify_code", "verify_image"]

_KINDS: dict[tuple[str, CpuLevel], dict[bytes, Kind]] = {
    (mode, level): {} for mode in abi.ISOLATION_MODES for level in CpuLevel}
_KINDS_LIMIT = 1 << 20  # distinct instructions remembered per mode and level


# --- whole-code checks ----------------------------------------------------------------------

@dataclass
class _Scan:
    """The result of the linear pass: instruction starts, group interiors, branch targets."""

    count: int
    starts: np.ndarray  # True at every instruction start (index: offset - code_offset)
    interior: bytearray  # 1 at the 2nd..last instruction of every group
    branches: list[tuple[int, int, int]]  # (address, length, target)


def _scan(code: bytes, code_offset: int, image_size: int, mode: str,
          level: CpuLevel) -> _Scan:
    """Walk capstone's instructions, apply the cached per-instruction rules, then the
    positional ones. The fast path (a plain instruction seen before) is one dict lookup."""
    kinds = _KINDS[mode, level]
    if len(kinds) > _KINDS_LIMIT:
        kinds.clear()
    get = kinds.get
    bundled = mode == Isolation.CODE_DATA
    addresses, sizes = decode.capstone_boundaries(code, code_offset)
    interior = bytearray(len(code))
    branches: list[tuple[int, int, int]] = []
    run: list[tuple[int, int, Role]] = []  # the current run of consecutive group-member roles
    # bundle: the first instruction that crosses a boundary ends the walk.
    crossing = np.flatnonzero((addresses & (abi.BUNDLE_SIZE - 1)) + sizes > abi.BUNDLE_SIZE)
    stop = int(crossing[0]) if bundled and len(crossing) else len(addresses)
    for off, n in zip(addresses[:stop].tolist(), sizes[:stop].tolist(), strict=True):
        rel = off - code_offset
        raw = code[rel:rel + n]
        kind = get(raw)
        if kind is None:
            kind = kinds[raw] = classify(raw, mode, level)
        if kind is PLAIN and not run:
            continue
        if kind.rule:
            raise Reject(kind.rule, kind.reason, off, n)
        if run and run[-1][2] == Role.ESP_WRITE and kind.role != Role.LEA_RSP:
            raise Reject("stack-pointer", "32-bit write to %esp not followed by "
                         "lea rsp, [rsp+r14]", run[-1][0], run[-1][1])
        if kind.role:
            run.append((off, n, kind.role))
            if kind.role in GROUPS:
                _check_group(run, interior, code_offset, bundled)
        elif run:
            run = []
        target = off + n + kind.disp
        if kind.direct:
            branches.append((off, n, target))
        elif kind.rip and not 0 <= target < image_size:
            raise Reject("rip-target", f"%rip-relative target {target:#x} outside the image "
                         f"[0, {image_size:#x})", off, n)
    if stop < len(addresses):
        raise Reject("bundle", "instruction crosses a 32-byte bundle boundary",
                     int(addresses[stop]), int(sizes[stop]))
    if run and run[-1][2] == Role.ESP_WRITE:
        raise Reject("stack-pointer", "32-bit write to %esp not followed by lea rsp, [rsp+r14]",
                     run[-1][0], run[-1][1])
    decoded = int(sizes.sum())
    if decoded != len(code):
        raise Reject("decodes", "capstone cannot decode this instruction",
                     code_offset + decoded, 0)
    starts = np.zeros(len(code), dtype=bool)
    starts[(addresses - code_offset).astype(np.intp)] = True
    return _Scan(len(addresses), starts, interior, branches)


def _check_group(run: list[tuple[int, int, Role]], interior: bytearray, code_offset: int,
                 bundled: bool) -> None:
    """The group ending with run[-1] is complete, and (code+data) inside one bundle."""
    last_off, last_n, role = run[-1]
    need = GROUPS[role][0]
    members = run[-1 - len(need):]
    if tuple(m[2] for m in members[:-1]) != need or len(members) != len(need) + 1:
        rule, text = group_rule(role)
        raise Reject(rule, f"not immediately preceded by its confinement group: {text}",
                     last_off, last_n)
    first = members[0][0]
    if bundled and first // abi.BUNDLE_SIZE != (last_off + last_n - 1) // abi.BUNDLE_SIZE:
        raise Reject("bundle", f"group starting at {first:#x} crosses a bundle boundary",
                     last_off, last_n)
    for off, _, _ in members[1:]:
        interior[off - code_offset] = 1
    run.clear()


def _valid_target(scan: _Scan, target: int, code_offset: int, code_end: int) -> bool:
    rel = target - code_offset
    return code_offset <= target < code_end and scan.starts[rel] and not scan.interior[rel]


def _check_targets(scan: _Scan, code_offset: int, code_end: int, rt_range: tuple[int, int],
                   rt_entries: set[int], entries: dict[str, int]) -> None:
    """runtime-call, direct-branch-target, entry-point: every way in lands on checked code."""
    rt_start, rt_end = rt_range
    for off, n, target in scan.branches:
        if rt_start <= target < rt_end and target not in rt_entries:
            raise Reject("runtime-call", f"direct branch to {target:#x} in the runtime page, "
                         "not one of its two entries", off, n)
        if target not in rt_entries and not _valid_target(scan, target, code_offset, code_end):
            raise Reject("direct-branch-target", f"direct branch to {target:#x}, not a checked "
                         "instruction start outside a group nor a runtime entry", off, n)
    for what, target in entries.items():
        if not _valid_target(scan, target, code_offset, code_end):
            raise Reject("entry-point", f"{what} at {target:#x} is not a checked instruction "
                         "start outside a group", target, 0)


def verify_code(code: bytes, *, code_offset: int, image_size: int,
                rt_range: tuple[int, int] = (0, abi.RT_PAGE_SIZE),
                isolation: str = abi.DEFAULT_ISOLATION, entries: dict[str, int] | None = None,
                name: str = "<code>", level: CpuLevel = CpuLevel.X86_64) -> Verdict:
    """Verify raw machine code that sits at image offset `code_offset` of an image."""
    if isolation not in abi.ISOLATION_MODES:
        raise VerificationError(f"{name}: unknown isolation mode {isolation!r}")
    rt_entries = {rt_range[0] + abi.RT_SYSCALL_OFFSET, rt_range[0] + abi.RT_EXIT_OFFSET}
    code_end = code_offset + len(code)
    try:
        if isolation == Isolation.CODE_DATA and code_offset % abi.BUNDLE_SIZE:
            raise Reject("bundle", f"code starts at {code_offset:#x}, not on a bundle boundary")
        scan = _scan(code, code_offset, image_size, isolation, CpuLevel(level))
        _check_targets(scan, code_offset, code_end, rt_range, rt_entries, entries or {})
    except Reject as e:
        return _rejected(name, isolation, code, code_offset, e, CpuLevel(level))
    return Verdict(name=name, ok=True, isolation=isolation, instructions=scan.count,
                   code_bytes=len(code), level=CpuLevel(level).value)


def _rejected(name: str, isolation: str, code: bytes, code_offset: int, e: Reject,
              level: CpuLevel) -> Verdict:
    raw, text = b"", ""
    if e.address is not None and code_offset <= e.address < code_offset + len(code):
        rel = e.address - code_offset
        length = e.length or next(iter(ix.Decoder(64, code[rel:rel + 15]))).len
        raw = code[rel:rel + length]
        text = decode.capstone_text(raw, e.address) or _iced_text(raw, e.address)
    return Verdict(name=name, ok=False, isolation=isolation, instructions=0,
                   code_bytes=len(code), address=e.address, bytes=raw, disassembly=text,
                   rule=e.rule, reason=e.reason, level=level.value)


def _iced_text(raw: bytes, address: int) -> str:
    ins = next(iter(ix.Decoder(64, raw, ip=address)))
    return "(bad)" if ins.code == ix.Code.INVALID else ix.Formatter(
        ix.FormatterSyntax.INTEL).format(ins)


def verify_image(image: Image) -> Verdict:
    """Verify all of an image's code except the runtime page (which the runtime replaces)."""
    rt_start, rt_end = image.rt_range
    code = image.code.data[rt_end - image.code.offset:]
    entries = {"entry": image.entry}
    entries.update({f"export {n!r}": off for n, off in image.exports.items()})
    return verify_code(code, code_offset=rt_end, image_size=image.size, rt_range=image.rt_range,
                       isolation=image.isolation, entries=entries, name=image.name,
                       level=image.level)


