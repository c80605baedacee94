"""Emulated Intel TME-MK: KeyID-tagged physical memory, AES-XTS per line, PCONFIG, cache.

No x86 here: the `tme` sandbox backend runs its emulator on top of this model.
"""

from tmebox.tme.errors import MachineCheck, TmeError, TmeTypeError, TmeValueError
from tmebox.tme.keys import ALGORITHMS, PconfigCommand, PconfigStatus
from tmebox.tme.platform import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_PHYSICAL_ADDRESS_BITS,
    LINE_SIZE,
    MAX_KEYID_BITS,
    PAGE_SIZE,
    Platform,
    TmeStats,
)
from tmebox.tme.xts import XtsCipher

__all__ = [
    "ALGORITHMS",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_PHYSICAL_ADDRESS_BITS",
    "LINE_SIZE",
    "MAX_KEYID_BITS",
    "PAGE_SIZE",
    "MachineCheck",
    "PconfigCommand",
    "PconfigStatus",
    "Platform",
    "TmeError",
    "TmeStats",
    "TmeTypeError",
    "TmeValueError",
    "XtsCipher",
]
