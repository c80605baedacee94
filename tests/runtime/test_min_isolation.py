"""Issue 10, finding 5: the host, not the image, decides the weakest isolation it runs.

The mode is read from the image's own `.tmebox_info`, which whoever built the image wrote.
Data mode confines memory accesses but not control flow: `escape()` below jumps to an
address outside every window, which the verifier accepts in data mode. Before the fix any
Runtime loaded such an image without complaint.
"""

from __future__ import annotations

import pytest

import tmebox
from tmebox.errors import IsolationError, SandboxFault, TmeboxError, VerificationError
from tmebox.runtime.api import Isolation
from tmebox.trusted import abi

ESCAPE = r"""
int escape(unsigned long target) { return ((int (*)(void))target)(); }
int twice(int x) { return 2 * x; }
int main(void) { return 0; }
"""
OUTSIDE = 0x7F00_0000_1000  # no window: host memory (or nothing)
BACKENDS = {"native": {}, "tme": {"pool_size": 64 << 20, "heap_size": 1 << 20}}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return request.param


@pytest.fixture
def escape_box(build_image):
    return build_image(ESCAPE, mode="data", name="escape")


def test_the_default_runtime_refuses_a_data_mode_image(backend, escape_box):
    with tmebox.Runtime(backend=backend, max_sandboxes=2, **BACKENDS[backend]) as rt:
        assert rt.min_isolation is Isolation.CODE_DATA
        with pytest.raises(IsolationError) as e:
            rt.load(escape_box)
        assert isinstance(e.value, VerificationError)
        msg = str(e.value)
        for part in (str(escape_box), "'data'", "min_isolation 'code+data'",
                     "min_isolation='data'", "--min-isolation data"):
            assert part in msg, (part, msg)
        assert rt.sandboxes == 0


def test_an_embedder_opts_in_to_data_mode(backend, escape_box):
    with tmebox.Runtime(backend=backend, max_sandboxes=2, min_isolation="data",
                        **BACKENDS[backend]) as rt:
        img = rt.load(escape_box)
        assert img.isolation is Isolation.DATA
        sb = rt.spawn(img)
        assert sb.call("twice", 21) == 42
        if backend == "tme":
            # The escape is the risk the embedder accepted; the emulator contains it. (The
            # native helper's containment of a %rip outside every window is tested with it.)
            with pytest.raises(SandboxFault):
                sb.call("escape", OUTSIDE)
            assert rt.spawn(img).call("twice", 2) == 4


def test_code_data_images_load_under_either_minimum(build_image):
    box = build_image(ESCAPE, mode="code+data", name="escape")
    for minimum in (Isolation.DATA, Isolation.CODE_DATA):
        with tmebox.Runtime(max_sandboxes=1, min_isolation=minimum) as rt:
            assert rt.spawn(rt.load(box)).call("twice", 4) == 8


def test_isolation_modes_are_the_image_formats_weakest_first():
    assert [m.value for m in Isolation] == list(abi.ISOLATION_MODES)
    assert Isolation.DATA.strength < Isolation.CODE_DATA.strength
    assert Isolation("code+data") is Isolation.CODE_DATA == "code+data"
    with pytest.raises(TmeboxError, match=r"unknown isolation mode 'none'.*code\+data"):
        tmebox.Runtime(min_isolation="none")
