"""Host functions (TMEBOX_IMPORT), typed exports, exported data and string helpers, on
both backends (docs/embedding.md)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
from c_image import build_c

import tmebox
from tmebox.errors import HostError, ImageError, MissingImport, SandboxError
from tmebox.trusted.signature import Signature, ValType

PLUGIN = r"""
#include <tmebox.h>
#include <stdbool.h>
#include <string.h>

TMEBOX_IMPORT int64_t host_add(int64_t a, int64_t b);
TMEBOX_IMPORT double host_scale(double x);
TMEBOX_IMPORT int host_log(const char *msg, size_t n);
TMEBOX_IMPORT int32_t host_again(int32_t depth);
TMEBOX_IMPORT float host_mix(int8_t a, float b, uint16_t c, double d);
TMEBOX_IMPORT void host_poke(void);

char greeting[32] = "hello from the data segment";
long counter;

int32_t neg(int32_t x) { return -x; }
uint8_t low_byte(uint32_t x) { return (uint8_t)x; }
bool is_odd(int64_t x) { return x & 1; }
double half(double x) { return x / 2; }
float mix(float a, int32_t b, double c) { return a * b + (float)c; }
int64_t use_add(int64_t a) { return host_add(a, 100) * 2; }
double use_scale(double x) { return host_scale(x) + 1.0; }
/* Live stack state across the host call: a call back into the sandbox must not touch it. */
double use_scale_keep(double x) {
    volatile double keep[16];
    double sum = 0;
    for (int i = 0; i < 16; i++) keep[i] = x + i;
    double r = host_scale(x);
    for (int i = 0; i < 16; i++) sum += keep[i];
    return r + sum;
}
int64_t use_add_keep(int64_t a) {
    volatile int64_t keep[16];
    int64_t sum = 0;
    for (int i = 0; i < 16; i++) keep[i] = a + i;
    int64_t r = host_add(a, 1);
    for (int i = 0; i < 16; i++) sum += keep[i];
    return r + sum;
}
float use_mix(void) { return host_mix(-3, 0.5f, 65535, 2.25); }
int say(void) { const char *m = "from the guest"; return host_log(m, strlen(m)); }
long bump(void) { host_poke(); return ++counter; }
/* Guest -> host -> guest -> host ...: depth calls deep. */
int32_t recurse(int32_t depth) { return depth <= 0 ? 0 : 1 + host_again(depth - 1); }
int crash(void) { volatile uintptr_t a = 0xfffff000u; return *(volatile int *)a; }
struct pair { int a, b; };
int take_pair(struct pair p) { return p.a + p.b; }
int main(void) { return say() == 14 ? 0 : 1; }
"""

# native: the first call of each export takes the Python path, later ones the C path
# (tmebox_fast.c); native-c warms every export up at spawn, so each call is a C one.
BACKENDS = ["native", "native-c", "tme"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory, sandbox_libc) -> Path:
    return build_c(tmp_path_factory, "plugin", PLUGIN)


class _WarmRuntime(tmebox.Runtime):
    """Sandboxes whose every export already takes the C path of sb.call."""

    def spawn(self, image, *args, **kw):
        sb = super().spawn(image, *args, **kw)
        for name in image.plan.exports:
            if name not in image.plan.unsupported:
                sb._lookup(name)
        assert sb._fast_exports
        return sb


def _runtime(backend: str, **kw) -> tmebox.Runtime:
    if backend == "native-c":
        return _WarmRuntime(backend="native", max_sandboxes=4, **kw)
    return tmebox.Runtime(backend=backend, max_sandboxes=4, **kw)


def _define_all(rt: tmebox.Runtime, log: list[bytes]) -> None:
    rt.define("host_add", lambda caller, a, b: a + b)
    rt.define("host_scale", lambda caller, x: x * 3.0)
    rt.define("host_log", lambda caller, p, n: log.append(caller.memory.read(p, n)) or n)
    rt.define("host_again", lambda caller, depth: caller.call("recurse", depth))
    rt.define("host_mix", lambda caller, a, b, c, d: a + b + c + d)
    rt.define("host_poke", lambda caller: None)


@pytest.fixture
def log() -> list[bytes]:
    return []  # what host_log received


@pytest.fixture(params=BACKENDS)
def sandbox(request, plugin, log):
    with _runtime(request.param) as rt:
        _define_all(rt, log)
        yield rt.spawn(rt.load(plugin))


def test_image_records_signatures_of_exports_and_imports(plugin) -> None:
    with _runtime("native") as rt:
        _define_all(rt, [])
        img = rt.load(plugin)
    assert str(img.exports["neg"]) == "(i32) -> i32"
    assert str(img.exports["mix"]) == "(f32, i32, f64) -> f32"
    assert img.exports["is_odd"] == Signature((ValType.I64,), ValType.BOOL)
    assert img.exports["take_pair"] is None  # a struct by value: not callable, see below
    assert not any(n.startswith("__tmebox") for n in img.exports)
    assert str(img.imports["host_log"]) == "(ptr, u64) -> i32"
    assert str(img.imports["host_poke"]) == "() -> void"
    assert str(img.imports["host_mix"]) == "(i8, f32, u16, f64) -> f32"


def test_typed_calls_convert_arguments_and_results(sandbox) -> None:
    assert sandbox.call("neg", 5) == -5
    assert sandbox.call("low_byte", 0x1234) == 0x34
    assert sandbox.call("is_odd", 7) is True and sandbox.call("is_odd", 8) is False
    assert sandbox.call("half", 3.0) == 1.5
    assert sandbox.call("half", 3) == 1.5  # an int is a fine double
    assert sandbox.call("mix", 1.5, 4, 0.25) == 6.25


def test_guest_calls_the_host(sandbox, log) -> None:
    assert sandbox.call("use_add", 1) == 202
    assert sandbox.call("use_scale", 2.0) == 7.0
    assert sandbox.call("use_mix") == pytest.approx(-3 + 0.5 + 65535 + 2.25)
    assert sandbox.call("say") == 14 and log == [b"from the guest"]
    assert [sandbox.call("bump") for _ in range(3)] == [1, 2, 3]


def test_host_calls_back_into_the_calling_sandbox(sandbox) -> None:
    assert sandbox.call("recurse", 5) == 5
    assert sandbox.call("use_add", 1) == 202  # and it is usable afterwards


def test_a_nested_call_with_floats_leaves_the_callers_stack_alone(sandbox) -> None:
    # The call thunk's frame goes below the stack of the guest that is waiting in the
    # host function, not at the top-level call's place (where that guest's frames are).
    nested = {"host_scale": lambda caller, x: caller.call("half", x) * 10.0,
              "host_add": lambda caller, a, b: int(caller.call("half", float(a))) + b}
    img = sandbox.image
    img.host_functions = tuple(nested.get(name, fn) for (name, _), fn in zip(
        img.plan.imports, img.host_functions, strict=True))
    sb = sandbox.runtime.spawn(img)  # sandboxes take the image's bindings when spawned
    assert sb.call("use_add_keep", 8) == 4 + 1 + 16 * 8 + 120  # int call, float inside
    assert sb.call("use_scale", 2.0) == 11.0
    assert sb.call("use_scale_keep", 2.0) == 10.0 + 16 * 2.0 + 120
    assert sb.call("use_scale_keep", 5.0) == 25.0 + 16 * 5.0 + 120


def test_main_calls_the_host(sandbox, log) -> None:
    assert sandbox.run() == 0 and log == [b"from the guest"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_function_calls_into_another_sandbox(plugin, backend) -> None:
    with _runtime(backend) as rt:
        _define_all(rt, [])
        img = rt.load(plugin)
        a, b = rt.spawn(img), rt.spawn(img)
        # Images bind host functions at load: this one calls into sandbox b.
        rt.define("host_add", lambda caller, x, y: b.call("neg", x) + y)
        c = rt.spawn(rt.load(plugin))
        assert c.call("use_add", 7) == (-7 + 100) * 2
        assert a.call("use_add", 7) == 214  # the first image keeps its binding


def test_wrong_arguments_are_type_errors_naming_the_signature(sandbox) -> None:
    with pytest.raises(TypeError, match=r"neg\(i32\) -> i32 takes 1 argument\(s\), 0 given"):
        sandbox.call("neg")
    with pytest.raises(TypeError, match=r"half.*argument 0: str is not a f64"):
        sandbox.call("half", "x")
    with pytest.raises(OverflowError, match=r"out of range for i32"):
        sandbox.call("neg", 1 << 31)
    with pytest.raises(TypeError, match="structure pair by value"):
        sandbox.call("take_pair", 1)
    assert sandbox.call("neg", -(1 << 31)) == -(1 << 31)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_raising_host_function_ends_the_call_with_host_error(plugin, backend) -> None:
    def boom(caller, a, b):
        raise ValueError("no such tenant")

    with _runtime(backend) as rt:
        _define_all(rt, [])
        rt.define("host_add", boom)
        img = rt.load(plugin)
        sb, other = rt.spawn(img), rt.spawn(img)
        with pytest.raises(HostError, match=r"host_add\(i64, i64\) -> i64 raised ValueError: "
                                            "no such tenant") as info:
            sb.call("use_add", 1)
        assert isinstance(info.value.__cause__, ValueError)
        assert isinstance(info.value, tmebox.TmeboxError)
        assert sb.call("neg", 3) == -3  # the sandbox itself goes on
        assert other.call("use_scale", 1.0) == 4.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_host_result_of_the_wrong_type_is_a_host_error(plugin, backend) -> None:
    with _runtime(backend) as rt:
        _define_all(rt, [])
        rt.define("host_add", lambda caller, a, b: "seven")
        sb = rt.spawn(rt.load(plugin))
        with pytest.raises(HostError, match="its result: str is not an int") as info:
            sb.call("use_add", 1)
        assert isinstance(info.value.__cause__, TypeError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_host_function_that_destroys_its_caller_ends_the_call(plugin, backend) -> None:
    with _runtime(backend) as rt:
        _define_all(rt, [])
        rt.define("host_add", lambda caller, a, b: caller.destroy() or 0)
        img = rt.load(plugin)
        sb, other = rt.spawn(img), rt.spawn(img)
        with pytest.raises(tmebox.SandboxDestroyed, match="return from host function"):
            sb.call("use_add", 1)
        assert other.call("use_scale", 1.0) == 4.0 and rt.sandboxes == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_of_nested_calls(plugin, backend) -> None:
    def careful(caller, a, b):
        with pytest.raises(TypeError):
            caller.call("neg", "x")  # nothing ran: the waiting guest goes on
        with pytest.raises(SandboxError, match="from inside a host function"):
            caller.run()
        return a + b

    def swallow_fault(caller, a, b):
        with pytest.raises(tmebox.SandboxFault):
            caller.call("crash")
        return 0  # the sandbox is dead: the waiting guest is not resumed

    with _runtime(backend) as rt:
        _define_all(rt, [])
        rt.define("host_add", careful)
        sb = rt.spawn(rt.load(plugin))
        assert sb.call("use_add", 1) == 202
        rt.define("host_add", swallow_fault)
        sb = rt.spawn(rt.load(plugin))
        with pytest.raises(SandboxError, match="faulted or timed out earlier"):
            sb.call("use_add", 1)
        assert sb.state == "dead"


def test_a_missing_host_function_is_named_at_load(plugin) -> None:
    with _runtime("native") as rt:
        rt.define("host_add", lambda caller, a, b: a + b)
        with pytest.raises(MissingImport, match=r"host_scale\(f64\) -> f64") as info:
            rt.load(plugin)
        assert "host_log" in str(info.value) and "host_add" not in str(info.value)
        assert rt.sandboxes == 0
        _define_all(rt, [])
        assert rt.load(plugin).imports  # once defined, it loads
    with _runtime("native") as rt:  # or given at load
        imports = {name: (lambda caller, *a: 0) for name in
                   ("host_add", "host_scale", "host_log", "host_again", "host_mix", "host_poke")}
        assert rt.spawn(rt.load(plugin, imports=imports)).call("use_add", 1) == 0


def test_exported_data_and_strings(sandbox) -> None:
    addr = sandbox.symbol("greeting")
    assert sandbox.memory.read_cstring(addr) == b"hello from the data segment"
    assert sandbox.memory.write_cstring(addr, "hi") == 3
    assert sandbox.memory.read_cstring(addr) == b"hi"
    sandbox.memory.write_u64(sandbox.symbol("counter"), 41)
    assert sandbox.call("bump") == 42
    with pytest.raises(SandboxError, match="no data symbol 'nope'"):
        sandbox.symbol("nope")
    with pytest.raises(ValueError, match="NUL"):
        sandbox.memory.write_cstring(addr, "a\0b")
    sandbox.memory.write(addr, b"xxxxxxxx")
    with pytest.raises(SandboxError, match="no NUL within 4 bytes"):
        sandbox.memory.read_cstring(addr, limit=4)


def test_a_zero_copy_view_with_numpy(plugin) -> None:
    import numpy as np

    from tmebox.runtime.native import windows

    with _runtime("native") as rt:
        _define_all(rt, [])
        img = rt.load(plugin)
        sb = rt.spawn(img)
        buf = sb.alloc(4096)
        arr = np.frombuffer(sb.memory.view(buf, 4096, writable=True), dtype=np.int64)
        arr[:] = np.arange(512)
        assert sb.memory.read_u64(buf + 8 * 7) == 7  # the same bytes, no copy
        ro = sb.memory.view(sb.symbol("greeting"), 5)
        assert bytes(ro) == b"hello" and ro.readonly
        with pytest.raises(tmebox.SandboxError, match="outside"):
            sb.memory.view(buf, 1 << 30)
        window = sb._engine.window
        free_before = windows.POOL.free_count
        sb.destroy()
        # The view itself was released; the array made from it still holds the buffer.
        with pytest.raises(ValueError, match="released"):
            bytes(ro)
        assert window not in windows.POOL._free and not arr.any()  # zero, not the next tenant
        arr[0] = 99  # writes land in the quarantined window, reaching no one
        others = [rt.spawn(img) for _ in range(3)]
        assert all(o._engine.window != window for o in others)
        del arr
        import gc

        gc.collect()
        assert window in windows.POOL._free and windows.POOL.free_count >= free_before - 3
        with pytest.raises(tmebox.SandboxDestroyed):
            sb.memory.view(buf, 8)


@pytest.mark.parametrize("backend", ["tme"])
def test_views_need_the_native_backend(plugin, backend) -> None:
    with _runtime(backend) as rt:
        _define_all(rt, [])
        sb = rt.spawn(rt.load(plugin))
        with pytest.raises(tmebox.TmeboxError, match="need the native backend"):
            sb.memory.view(sb.symbol("greeting"), 8)


def test_a_guest_forging_a_host_call_gets_efault_not_the_host(build_image) -> None:
    # A raw runtime call with a frame pointer outside the window reaches no host memory.
    src = r"""
    #include <tmebox.h>
    TMEBOX_IMPORT int64_t host_add(int64_t a, int64_t b);
    long forge(long frame) {
        long r;
        __asm__ volatile ("syscall" : "=a"(r) : "a"(0x7200L), "D"(frame) : "rcx", "r11", "memory");
        return r;
    }
    long keep(void) { return host_add(1, 2); }
    """
    img = build_image(src, name="forge")
    seen = []
    with _runtime("native") as rt:
        rt.define("host_add", lambda caller, a, b: seen.append((a, b)) or a + b)
        sb = rt.spawn(rt.load(img))
        L = sb._layout
        # past the window's end, straddling the end of its memory, in the guard below the
        # code, and a host address (only its low 32 bits count): EFAULT every time, on the
        # Python path (first call) and the C one (later calls)
        forged = [0xFFFF_FFF0, L.rw_hi - 8, 0x100, L.code_lo - 8, (0x7F00 << 32) | 0xFFFF_FFF0]
        for frame in forged * 2:
            assert sb.call("forge", frame) == -14, hex(frame)
        assert seen == []
        assert sb.call("keep") == 3 and sb.call("keep") == 3 and seen == [(1, 2)] * 2


def test_calls_from_threads_into_different_sandboxes(plugin) -> None:
    with _runtime("native") as rt:
        _define_all(rt, [])
        img = rt.load(plugin)
        sbs = [rt.spawn(img) for _ in range(2)]
        errors: list[BaseException] = []

        def work(sb):
            try:
                for i in range(200):
                    assert sb.call("use_add", i) == (i + 100) * 2
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(sb,)) for sb in sbs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors


def test_image_info_with_a_bad_signature_is_refused(plugin, tmp_path) -> None:
    raw = plugin.read_bytes()
    bad = raw.replace(b'"(i32) -> i32"', b"")  # not present: signatures are JSON lists
    assert bad == raw
    forged = raw.replace(b'["i32", ["i32"]]', b'["i99", ["i32"]]', 1)
    assert forged != raw
    path = tmp_path / "forged.box"
    path.write_bytes(forged)
    with _runtime("native") as rt, pytest.raises(ImageError, match="bad signature"):
        rt.load(path)


def test_f32_and_special_floats_round_trip(sandbox) -> None:
    assert math.isinf(sandbox.call("half", math.inf))
    assert math.isnan(sandbox.call("half", math.nan))
    with pytest.raises(OverflowError, match="f32"):
        sandbox.call("mix", 1e300, 1, 0.0)
