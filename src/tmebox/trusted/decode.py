"""The verifier's second decoder: instruction boundaries from capstone, in bulk.

capstone's Python `disasm()` builds one object per instruction (~3 MiB/s without detail);
calling its C `cs_disasm` directly and reading the instruction array through numpy is ~10x
faster. Only addresses and sizes are read, through the field offsets of capstone's own
`_cs_insn` ctypes structure (capstone is pinned in pyproject.toml).
"""

from __future__ import annotations

import ctypes
import threading

import capstone
import numpy as np

_CHUNK = 16384  # instructions per cs_disasm call: bounds the temporary array (~4 MiB)
_INSN = capstone._cs_insn
_INSN_DTYPE = np.dtype({
    "names": ["address", "size"],
    "formats": ["<u8", "<u2"],
    "offsets": [_INSN.address.offset, _INSN.size.offset],
    "itemsize": ctypes.sizeof(_INSN),
})

# ctypes releases the GIL around cs_disasm: one capstone handle per thread.
_local = threading.local()


def _handle() -> capstone.Cs:
    cs = getattr(_local, "cs", None)
    if cs is None:
        cs = _local.cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return cs


def capstone_boundaries(code: bytes, address: int) -> tuple[np.ndarray, np.ndarray]:
    """Addresses and sizes of the instructions capstone decodes linearly from `address`.

    Decoding stops (as capstone does) at the first byte sequence it cannot decode: the sizes
    then sum to less than len(code).
    """
    buf = ctypes.create_string_buffer(code, len(code))
    base = ctypes.addressof(buf)
    addresses: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    pos = 0
    insn = ctypes.POINTER(_INSN)()
    handle = _handle().csh
    while pos < len(code):
        ptr = ctypes.cast(ctypes.c_void_p(base + pos), ctypes.POINTER(ctypes.c_char))
        count = capstone._cs.cs_disasm(handle, ptr, len(code) - pos, address + pos, _CHUNK,
                                       ctypes.byref(insn))
        if count == 0:
            break
        try:
            raw = (ctypes.c_char * (count * _INSN_DTYPE.itemsize)).from_address(
                ctypes.addressof(insn.contents))
            arr = np.frombuffer(raw, dtype=_INSN_DTYPE)
            addresses.append(arr["address"].copy())
            sizes.append(arr["size"].copy())
            pos = int(arr["address"][-1]) + int(arr["size"][-1]) - address
        finally:
            capstone._cs.cs_free(insn, count)
    if not addresses:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint16)
    return np.concatenate(addresses), np.concatenate(sizes)


def capstone_text(data: bytes, address: int) -> str | None:
    """capstone's Intel-syntax text of the first instruction in `data`, or None."""
    for _, _, mnemonic, op_str in _handle().disasm_lite(data, address, 1):
        return f"{mnemonic} {op_str}".strip()
    return None
