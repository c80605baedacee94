"""matplotlib is the `tmebox[bench]` extra: nothing but `tmebox bench`'s plots needs it."""

from __future__ import annotations

import subprocess
import sys

# Makes `import matplotlib` fail the way it does where the extra is not installed.
NO_MATPLOTLIB = ("import importlib.abc, importlib.machinery, sys\n"
                 "class Hide(importlib.abc.MetaPathFinder):\n"
                 "    def find_spec(self, name, path=None, target=None):\n"
                 "        if name.split('.')[0] == 'matplotlib':\n"
                 "            raise ModuleNotFoundError(name)\n"
                 "sys.meta_path.insert(0, Hide())\n"
                 "import importlib.util\n"
                 "importlib.util.find_spec = lambda name, *a: None if name == 'matplotlib' "
                 "else importlib.machinery.PathFinder.find_spec(name)\n")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_MATPLOTLIB + code], capture_output=True,
                          text=True, timeout=120)


def test_library_and_cli_import_without_matplotlib() -> None:
    r = _python("import tmebox, tmebox.runtime.api, tmebox.cli, tmebox.bench, tmebox.demo\n"
                "import tmebox.bench.report, tmebox.toolchain.cc\n"
                "print('matplotlib' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_bench_without_matplotlib_says_what_to_install(tmp_path) -> None:
    r = _python(f"from tmebox import cli; sys.exit(cli.main(['bench', '-o', '{tmp_path}']))")
    assert r.returncode == 1, r.stderr
    assert "tmebox[bench]" in r.stderr and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir()), "nothing measured or written before the error"
