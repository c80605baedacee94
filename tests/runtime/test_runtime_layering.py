"""The runtime never imports the toolchain (an embedder's `import tmebox` does not pull in the
compiler), and the emulated hardware imports nothing of tmebox but the error base classes
(docs/design.md, "Where the code lives")."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(module: str) -> set[str]:
    code = (f"import sys, {module}; "
            "print(' '.join(m for m in sys.modules if m.startswith('tmebox')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(r.stdout.split())


@pytest.mark.parametrize("module", ["tmebox.runtime.api", "tmebox.runtime.native",
                                    "tmebox.runtime.tme"])
def test_the_runtime_does_not_import_the_toolchain(module: str) -> None:
    loaded = _loaded_after(module)
    assert module in loaded
    assert not {m for m in loaded if m.startswith(("tmebox.toolchain", "tmebox.programs",
                                                   "tmebox.bench", "tmebox.fuzz"))}


def test_the_emulated_hardware_imports_nothing_else() -> None:
    loaded = _loaded_after("tmebox.tme")
    others = {m for m in loaded if not m.startswith("tmebox.tme")}
    # The error base classes (TmeboxError) and the packages that hold them, nothing else.
    assert others == {"tmebox", "tmebox.errors", "tmebox.trusted", "tmebox.trusted.errors"}
