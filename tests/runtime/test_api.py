"""Runtime-level behaviour: capacity checks, window placement, the runtime page."""

from __future__ import annotations

import hashlib

import pytest
from programs import basic

import tmebox
from tmebox.errors import OutOfSandboxes, TmeboxError
from tmebox.runtime import layout as lay
from tmebox.runtime.native.windows import POOL, check_map_count
from tmebox.trusted import abi


def test_map_count_check_names_the_sysctl():
    with pytest.raises(OutOfSandboxes, match=r"sysctl -w vm\.max_map_count=\d+"):
        check_map_count(10_000_000)


def test_max_sandboxes_is_enforced():
    with tmebox.Runtime(max_sandboxes=2) as rt:
        img = rt.load_unverified(basic())
        a, b = rt.spawn(img), rt.spawn(img)
        with pytest.raises(OutOfSandboxes, match="max_sandboxes=2"):
            rt.spawn(img)
        a.destroy()
        assert rt.spawn(img).call("args6", 2) == 2
        assert b.state == "parked"
    with pytest.raises(TmeboxError, match="closed"):
        rt.spawn(img)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TmeboxError, match="unknown backend 'x86'"):
        tmebox.Runtime(backend="x86")
    with pytest.raises(TmeboxError, match="at least 1"):
        tmebox.Runtime(max_sandboxes=0)
    with pytest.raises(TmeboxError, match="no options"):
        tmebox.Runtime(backend="native", pool_size=1)


def test_windows_never_overlap_the_host(rt):
    img = rt.load_unverified(basic())
    sbs = [rt.spawn(img) for _ in range(40)]
    host = lay.host_mapped_windows(lay.read_host_maps()) - POOL.windows
    for sb in sbs:
        k = sb.base >> abi.WINDOW_SHIFT
        assert sb.base == k << abi.WINDOW_SHIFT
        assert not {k - 1, k, k + 1} & host
        assert lay.FIRST_WINDOW <= k <= lay.LAST_WINDOW


def test_runtime_page_has_two_stubs_and_traps_elsewhere(rt):
    sb = rt.spawn(rt.load_unverified(basic()))
    page = sb.memory.read(sb.base + abi.IMAGE_WINDOW_OFFSET, abi.RT_PAGE_SIZE)
    slots = []
    for entry in (abi.RT_SYSCALL_OFFSET, abi.RT_EXIT_OFFSET):
        assert page[entry:entry + 4] == b"\x64\xff\x24\x25"  # jmp *%fs:disp32
        # through a host thread-local (static TLS lies below the thread pointer)
        slots.append(int.from_bytes(page[entry + 4:entry + 8], "little", signed=True))
    assert slots[0] < 0 and slots[1] == slots[0] + 8
    # the host enters calls through `call *%r10` ending at the exit entry (not a bundle
    # start, not an entry: no verified branch can reach it)
    call = abi.RT_EXIT_OFFSET - 3
    assert page[call:abi.RT_EXIT_OFFSET] == b"\x41\xff\xd2" and call % abi.BUNDLE_SIZE
    rest = bytearray(page)
    for entry in (abi.RT_SYSCALL_OFFSET, abi.RT_EXIT_OFFSET):
        rest[entry:entry + 8] = b"\xcc" * 8
    rest[call:abi.RT_EXIT_OFFSET] = b"\xcc" * 3
    assert rest == b"\xcc" * abi.RT_PAGE_SIZE


def test_free_window_runs_keep_a_margin():
    runs = list(lay.free_window_runs({10, 11, 500}, margin=1))
    assert runs[0] == (lay.FIRST_WINDOW, 9)
    assert runs[1] == (13, 499)
    assert runs[2][0] == 502
    assert lay.host_mapped_windows(["100000000-200000001 r-xp 0 0:0 0 x"]) == {1, 2}


@pytest.mark.parametrize("used", [set(), {0}, {1}, {2, 3}, {lay.LAST_WINDOW},
                                  {lay.LAST_WINDOW - 1, lay.LAST_WINDOW + 5}, {5, 7, 9},
                                  {21845, 32767}, set(range(0, 40000, 3))])
@pytest.mark.parametrize("margin", [0, 1, 2])
def test_free_window_runs_are_the_maximal_runs_of_free_windows(used, margin):
    near = {u + d for u in used for d in range(-margin, margin + 1)}
    free = [k for k in range(lay.FIRST_WINDOW, lay.LAST_WINDOW + 1) if k not in near]
    want, start = [], None
    for i, k in enumerate(free):
        start = k if start is None else start
        if i + 1 == len(free) or free[i + 1] != k + 1:
            want.append((start, k + 1))
            start = None
    assert list(lay.free_window_runs(used, margin)) == want


def test_faults_stay_contained_after_faulthandler_is_enabled_again():
    import faulthandler

    was = faulthandler.is_enabled()
    with tmebox.Runtime() as rt:
        img = rt.load_unverified(basic())
        faulthandler.disable()  # puts back the handler it found (not ours) ...
        faulthandler.enable()  # ... and takes SIGSEGV over again ...
        try:
            with tmebox.Runtime() as rt2:  # ... and a new Runtime chains to it
                with pytest.raises(tmebox.SandboxFault):
                    rt2.spawn(rt2.load_unverified(basic())).call("segv_guard")
                with pytest.raises(tmebox.SandboxFault):
                    rt.spawn(img).call("div0")
        finally:
            if not was:
                faulthandler.disable()


def test_load_maps_the_bytes_it_verified(build_image, monkeypatch):
    """The file is read once: replacing it while the verifier runs changes nothing mapped."""
    from tmebox.trusted import verifier

    good = build_image("int f(void) { return 1; }\nint main(void) { return 0; }", name="good")
    swap = build_image("int f(void) { return 2; }\nint main(void) { return 0; }", name="swap")
    original, replacement = good.read_bytes(), swap.read_bytes()
    real = verifier.verify_image

    def verify_then_swap(image):
        verdict = real(image)
        good.write_bytes(replacement)  # the attacker wins every race after this point
        return verdict

    monkeypatch.setattr(verifier, "verify_image", verify_then_swap)
    from tmebox.trusted import verdict

    for module in (verdict, verifier):  # no verdict kept: verify
        monkeypatch.setattr(module, "stored", lambda sha256: None)
    with tmebox.Runtime(max_sandboxes=1) as rt:
        img = rt.load(good)
        assert good.read_bytes() == replacement
        assert img.plan.digest == hashlib.sha256(original).hexdigest()
        assert rt.spawn(img).call("f") == 1
