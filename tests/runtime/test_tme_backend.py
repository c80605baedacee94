"""The tme backend: the Runtime/Sandbox API on the emulated TME-MK platform.

The backend-independent behaviour (calls, runtime calls, faults, timeouts, life cycle) is
checked by running the native backend's own tests against a tme Runtime; the tests
below cover what only this backend has (KeyIDs, the pool, line-granular buffers, the
emulator's plaintext cache) and compare real C programs' output with the native backend.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from asm_image import assemble
from programs import BASIC

# The native backend's tests, collected again here with this module's `rt` (tme).
from test_native import (  # noqa: F401
    img,
    test_call_passes_six_arguments_and_returns_signed,
    test_destroyed_sandbox_refuses_everything,
    test_exit_inside_a_call,
    test_fault_message_names_the_instruction,
    test_faults_are_contained,
    test_pending_x87_exception_stays_in_the_sandbox,
    test_registers_are_cleared_on_every_entry_and_base_is_forced,
    test_run_main_with_captured_stdout,
    test_runtime_calls_inside_call,
    test_stdout_to_a_file_object,
    test_timeout_stops_endless_loops,
)

import tmebox
from tmebox.errors import OutOfSandboxes, SandboxError, TmeboxError
from tmebox.runtime.memory import SandboxMemoryError

POOL = 64 << 20


@pytest.fixture
def rt():
    with tmebox.Runtime(backend="tme", max_sandboxes=64, pool_size=POOL, heap_size=1 << 20,
                        resident_pages=2048) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def basic_plan():
    return assemble(BASIC)


def test_gs_base_and_addr32_prefix_confine_accesses(rt, basic_plan):
    sb = rt.spawn(rt.load_unverified(basic_plan))
    code = basic_plan.code
    at = basic_plan.exports["load64"]
    assert code[at:at + 2] == b"\x65\x67"  # %gs segment override + address-size override
    p = sb.alloc(64)
    sb.memory.write(p, (0x1122334455667788).to_bytes(8, "little"))
    assert sb.call("load64", p) == 0x1122334455667788
    # Garbage in the upper half of the pointer: addr32 drops it, %gs adds the window base.
    forged = (0xDEAD << 48) | (0x5A5A << 32) | (p & 0xFFFF_FFFF)
    assert sb.call("load64", forged) == 0x1122334455667788
    assert sb.call("get_gsbase") == sb.base == sb.call("get_r14")


def test_each_sandbox_has_its_own_keyid_region_and_layout(rt, basic_plan):
    image = rt.load_unverified(basic_plan)
    a, b = rt.spawn(image), rt.spawn(image)
    plat = rt.backend.platform
    ka, kb = a.base >> 32, b.base >> 32
    assert ka != kb and ka >= 1 and kb >= 1
    assert plat.key_kind(ka) == plat.key_kind(kb) == "random"
    la, lb = a._engine.layout, b._engine.layout
    assert la.code_lo != lb.code_lo  # per-sandbox copies at distinct pool offsets
    assert la.rw_hi <= lb.code_lo or lb.rw_hi <= la.code_lo
    assert a.run() == 42 and b.run() == 42


def test_alloc_hands_out_lines_that_share_pages(rt, basic_plan):
    image = rt.load_unverified(basic_plan)
    a, b = rt.spawn(image), rt.spawn(image)
    pa, pb = a.alloc(10), b.alloc(64)
    assert pb & 0xFFFF_FFFF == (pa & 0xFFFF_FFFF) + 64  # next line, same page
    assert pa >> 12 & 0xFFFFF == pb >> 12 & 0xFFFFF
    for i in range(20):  # the page moves between the two aliases every call
        a.call("fill", pa, 0x41 + i % 3, 64)
        b.call("fill", pb, 0x61 + i % 5, 64)
        assert a.call("sum_bytes", pa, 64) == 64 * (0x41 + i % 3)
        assert b.call("sum_bytes", pb, 64) == 64 * (0x61 + i % 5)
    assert a.memory.read(pa, 4) == bytes([0x41 + 19 % 3]) * 4
    a.free(pa, 10)
    with pytest.raises(SandboxError, match="not a buffer"):
        a.free(pa, 10)
    assert a.alloc(64) == pa


def test_more_pages_than_the_emulator_holds(basic_plan):
    with tmebox.Runtime(backend="tme", max_sandboxes=4, pool_size=POOL,
                        resident_pages=64) as rt:
        image = rt.load_unverified(basic_plan)
        a, b = rt.spawn(image), rt.spawn(image)
        n = 1 << 20  # 256 pages through a 64-frame cache
        pa, pb = a.alloc(n), b.alloc(n)
        assert a.call("fill", pa, 3, n) == n
        assert b.call("fill", pb, 5, n) == n
        assert a.call("sum_bytes", pa, n) == 3 * n
        assert b.call("sum_bytes", pb, n) == 5 * n
        assert a.memory.read(pa + n - 8, 8) == b"\x03" * 8
        assert a.run() == 42


def test_keyids_run_out_with_a_clear_message(basic_plan):
    with tmebox.Runtime(backend="tme", max_sandboxes=16, keyid_bits=2,
                        pool_size=POOL) as rt:
        image = rt.load_unverified(basic_plan)
        sbs = [rt.spawn(image) for _ in range(3)]
        with pytest.raises(OutOfSandboxes, match=r"all 3 KeyIDs .*2 KeyID bits"):
            rt.spawn(image)
        base = sbs[1].base
        sbs[1].destroy()
        again = rt.spawn(image)  # the KeyID comes back, with a fresh key
        assert again.base == base and again.run() == 42


def test_a_full_pool_says_so_with_numbers(basic_plan):
    with tmebox.Runtime(backend="tme", max_sandboxes=64, pool_size=4 << 20,
                        heap_size=1 << 20) as rt:
        image = rt.load_unverified(basic_plan)
        alive = []
        with pytest.raises(OutOfSandboxes, match=r"pool is full: .* needs \d+ KiB, the "
                                                  r"largest free extent is \d+ KiB of 4 MiB"):
            for _ in range(10):
                alive.append(rt.spawn(image))
        assert 1 <= len(alive) < 10
        alive[0].destroy()
        assert rt.spawn(image).run() == 42


def test_bad_options_are_refused():
    with pytest.raises(TmeboxError, match="pool_size"):
        tmebox.Runtime(backend="tme", pool_size=12345)
    with pytest.raises(TmeboxError, match="does not fit a 4 GiB window"):
        tmebox.Runtime(backend="tme", pool_size=8 << 30)
    with pytest.raises(TmeboxError, match="tme backend: .*colour"):
        tmebox.Runtime(backend="tme", colour="red")
    with pytest.raises(TmeboxError, match="native backend takes no options"):
        tmebox.Runtime(backend="native", keyid_bits=4)


def test_transfer_needs_the_tme_backend(basic_plan):
    with tmebox.Runtime(backend="native", max_sandboxes=4) as rt:
        image = rt.load_unverified(basic_plan)
        a, b = rt.spawn(image), rt.spawn(image)
        with pytest.raises(TmeboxError, match="transfer needs the tme backend"):
            a.transfer(a.alloc(64), 64, to=b)


def test_host_memory_bounds(rt, basic_plan):
    sb = rt.spawn(rt.load_unverified(basic_plan))
    L = sb._engine.layout
    with pytest.raises(SandboxMemoryError):
        sb.memory.read(sb.base + 0x100, 4)  # the pool's first 64 KiB are a guard
    with pytest.raises(SandboxMemoryError):
        sb.memory.write(sb.base + L.code_lo + 0x1000, b"x")  # own code is read-only
    with pytest.raises(SandboxMemoryError):
        sb.memory.read(sb.base + POOL - 8, 16)  # past the pool
    assert len(sb.memory.read(sb.base + L.code_lo, 16)) == 16


def test_state_is_kept_across_switches_between_many_sandboxes(rt, basic_plan):
    image = rt.load_unverified(basic_plan)
    sbs = [rt.spawn(image) for _ in range(12)]
    bufs = [sb.alloc(256) for sb in sbs]
    for round_ in range(3):
        for i, (sb, p) in enumerate(zip(sbs, bufs, strict=True)):
            sb.call("fill", p, i + round_, 256)
        for i, (sb, p) in enumerate(zip(sbs, bufs, strict=True)):
            assert sb.call("sum_bytes", p, 256) == 256 * (i + round_)
    assert all(sb.run() == 42 for sb in sbs)


PROGRAMS = {
    "printf": r"""
#include <stdio.h>
int main(int argc, char **argv) {
    printf("%s|%d|%u|%x|%o|%c|%5.2f|%e|%-6s|%+d|%%|%p\n", argv[0], -42, 42u, 0xbeef, 8, 'z',
           3.14159, 12345.678, "ab", 7, (void *)0);
    for (int i = 1; i < argc; i++) printf("arg %d=%s\n", i, argv[i]);
    return 3;
}
""",
    "malloc_qsort": r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
int main(void) {
    int n = 20000; int *v = malloc(n * sizeof *v);
    for (int i = 0; i < n; i++) v[i] = (int)((i * 7919L) % 10007);
    qsort(v, n, sizeof *v, cmp);
    long sum = 0; for (int i = 0; i < n; i++) sum += (long)v[i] * i;
    char *b[300];
    for (int r = 0; r < 10; r++) {
        for (int i = 0; i < 300; i++) { b[i] = malloc(16 + i * 97); memset(b[i], i, 16 + i * 97); }
        for (int i = 0; i < 300; i += 2) free(b[i]);
        for (int i = 1; i < 300; i += 2) { sum += b[i][i]; free(b[i]); }
    }
    char *big = malloc(3 << 20); memset(big, 7, 3 << 20); sum += big[(3 << 20) - 1]; free(big);
    printf("%d %d %d %ld\n", v[0], v[n / 2], v[n - 1], sum);
    return 0;
}
""",
}


@pytest.mark.parametrize("mode", ["code+data", "data"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_c_programs_print_the_same_on_both_backends(build_image, name, mode):
    image = build_image(PROGRAMS[name], mode=mode, name=name)
    results = []
    for backend, options in (("native", {}), ("tme", {"pool_size": POOL, "heap_size": 8 << 20})):
        with tmebox.Runtime(backend=backend, max_sandboxes=2, min_isolation=mode,
                            **options) as rt:
            out = bytearray()
            status = rt.spawn(rt.load(image), argv=["prog", "x y", "é"], stdout=out).run()
            results.append((status, bytes(out)))
    assert results[0] == results[1]
    assert results[0][1]


def test_tmebox_run_backend_tme(tmp_path, sandbox_libc):
    src = tmp_path / "hi.c"
    src.write_text('#include <stdio.h>\nint main(int c, char **v) '
                   '{ printf("hi %s\\n", v[1]); return 5; }\n')
    cli = str(Path(sys.executable).with_name("tmebox"))
    r = subprocess.run([cli, "run", "--backend", "tme", str(src), "there"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.stdout == "hi there\n", r.stderr
    assert r.returncode == 5


def test_doc_examples_run(tmp_path, monkeypatch, sandbox_libc):
    doc = Path(__file__).resolve().parents[2] / "docs" / "tme-backend.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{doc}:block{i}", "exec"), namespace)  # noqa: S102


def test_threads_share_the_emulator_safely(rt, basic_plan):
    image = rt.load_unverified(basic_plan)
    sbs = [rt.spawn(image) for _ in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            sb = sbs[i]
            p = sb.alloc(8192)
            for r in range(40):
                sb.call("fill", p, i * 10 + r % 7, 8192)
                assert sb.call("getpid_loop", 3) == 3
                assert sb.call("sum_bytes", p, 8192) == 8192 * (i * 10 + r % 7)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("seed", range(3))
def test_plaintext_cache_agrees_with_a_model_under_random_traffic(basic_plan, seed):
    """Sandboxes, the host and transfers write lines of shared pages in random order
    through a 64-frame cache; every read agrees with a dict of what was last written."""
    rng = random.Random(seed)
    with tmebox.Runtime(backend="tme", max_sandboxes=8, pool_size=POOL,
                        resident_pages=64) as rt:
        image = rt.load_unverified(basic_plan)
        sbs = [rt.spawn(image) for _ in range(4)]
        owner: dict[int, int] = {}  # pool line offset -> sandbox index
        model: dict[int, bytes] = {}  # pool line offset -> 64 bytes its owner reads
        for _ in range(120):  # buffers of 1-3 lines, interleaved so owners share pages
            i = rng.randrange(4)
            n = 64 * rng.randint(1, 3)
            p = sbs[i].alloc(n)
            if rng.random() < 0.3:  # spread the buffers over more pages than frames
                sbs[i].alloc(4096 * rng.randint(1, 3))
            for off in range(p & 0xFFFF_FFFF, (p & 0xFFFF_FFFF) + n, 64):
                owner[off], model[off] = i, bytes(64)
        lines = sorted(owner)
        for _ in range(600):
            off = rng.choice(lines)
            i = owner[off]
            sb = sbs[i]
            op = rng.random()
            if op < 0.35:
                word = rng.randrange(8) * 8
                v = rng.getrandbits(64)
                sb.call("store64", sb.base + off + word, v)
                model[off] = model[off][:word] + v.to_bytes(8, "little") + model[off][word + 8:]
            elif op < 0.5:
                data = rng.randbytes(64)
                sb.memory.write(sb.base + off, data)
                model[off] = data
            elif op < 0.6:
                j = rng.randrange(4)
                if j != i:
                    sb.transfer(sb.base + off, 64, to=sbs[j])
                    owner[off] = j
            elif op < 0.65:
                rt.backend.sync()
                assert rt.backend.platform.dram(off, 64) != model[off] or model[off] == bytes(64)
            else:
                word = rng.randrange(8) * 8
                got = sb.call("load64", sb.base + off + word) & 0xFFFF_FFFF_FFFF_FFFF
                assert got.to_bytes(8, "little") == model[off][word:word + 8]
        for off in lines:
            sb = sbs[owner[off]]
            assert sb.memory.read(sb.base + off, 64) == model[off]


def test_closing_a_runtime_frees_its_pool_without_the_cycle_collector(basic_plan):
    import gc
    import weakref

    gc.disable()
    try:
        rt = tmebox.Runtime(backend="tme", max_sandboxes=2, pool_size=POOL)
        rt.spawn(rt.load_unverified(basic_plan)).run()
        backend = weakref.ref(rt.backend)
        rt.close()
        del rt
        assert backend() is None  # freed by reference counting alone
    finally:
        gc.enable()
