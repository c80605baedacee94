from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tmebox  # noqa: E402


@pytest.fixture
def rt():
    with tmebox.Runtime(backend="native", max_sandboxes=2048) as runtime:
        yield runtime

