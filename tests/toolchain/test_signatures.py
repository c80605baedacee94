"""C signatures from debug information (tmebox.toolchain.signatures) and the link step's use
of them: what crosses, what is refused and why."""

from __future__ import annotations

import subprocess

import pytest

import tmebox
from tmebox.errors import ToolchainError
from tmebox.toolchain.signatures import read_signatures

SOURCE = r"""
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
typedef int64_t my_long;
typedef const char *name_t;
enum colour { RED, GREEN };
struct pair { int a, b; };
__thread int per_thread;

my_long typed(my_long a, name_t n, enum colour c) { return a + n[0] + c + per_thread; }
bool flag(unsigned char c, signed char s, short h, unsigned short u) { return c + s + h + u; }
float f(float x, double y) { return x + (float)y; }
void nothing(void) {}
size_t size(void *p, const volatile uint32_t *q) { return (size_t)p + *q; }
int by_value(struct pair p) { return p.a; }
int variadic(int n, ...) { return n; }
long double wide(long double x) { return x; }
long seven(long a, long b, long c, long d, long e, long f, long g) { return a + g; }
int host_call(int x);
int use(int x) { return host_call(x); }
"""


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    d = tmp_path_factory.mktemp("sig")
    (d / "s.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-g", "-fno-merge-debug-strings", "-c", "-o", str(d / "s.o"),
                    str(d / "s.c")], check=True)
    return read_signatures(d / "s.o")


@pytest.mark.parametrize("name, want", [
    ("typed", "(i64, ptr, u32) -> i64"),
    ("flag", "(u8, i8, i16, u16) -> bool"),
    ("f", "(f32, f64) -> f32"),
    ("nothing", "() -> void"),
    ("size", "(ptr, ptr) -> u64"),
])
def test_scalars_typedefs_enums_and_pointers(found, name: str, want: str) -> None:
    assert str(found.definitions[name]) == want


@pytest.mark.parametrize("name, why", [
    ("by_value", "structure pair by value"),
    ("variadic", "variadic"),
    ("wide", "long double"),
    ("seven", "more arguments than the System V argument registers"),
])
def test_what_does_not_cross_says_why(found, name: str, why: str) -> None:
    assert isinstance(found.definitions[name], str) and why in found.definitions[name]


def test_declarations_of_called_functions(found) -> None:
    assert str(found.declarations["host_call"]) == "(i32) -> i32"


def test_no_debug_information_is_no_signatures(tmp_path) -> None:
    (tmp_path / "s.c").write_text("int f(int x) { return x; }\n")
    subprocess.run(["gcc", "-O2", "-c", "-o", str(tmp_path / "s.o"), str(tmp_path / "s.c")],
                   check=True)
    found = read_signatures(tmp_path / "s.o")
    assert found.definitions == {} and found.declarations == {}


def test_an_import_that_cannot_cross_is_a_link_error(build_image) -> None:
    src = r"""
    #include <tmebox.h>
    struct big { long a[4]; };
    TMEBOX_IMPORT long host_take(struct big b);
    long use(void) { struct big b = {{1, 2, 3, 4}}; return host_take(b); }
    """
    with pytest.raises(ToolchainError, match=r"host function host_take \(TMEBOX_IMPORT\).*"
                                             r"structure big by value"):
        build_image(src, name="bad_import")


def test_a_typo_in_an_import_is_still_an_undefined_reference(build_image) -> None:
    # Only TMEBOX_IMPORT declarations become host functions; any other undefined call fails
    # to link as it always did.
    with pytest.raises(ToolchainError, match="undefined reference to `host_missing'"):
        build_image("long host_missing(long);\nlong use(void) { return host_missing(1); }\n",
                    name="undefined")


def test_tls_units_link_with_signatures(build_image) -> None:
    image = build_image(SOURCE.replace("int host_call(int x);", "int host_call(int x) "
                                       "{ return x; }"), name="tls")
    with tmebox.Runtime() as rt:
        img = rt.load(image)
        assert str(img.exports["typed"]) == "(i64, ptr, u32) -> i64"
        assert img.exports["by_value"] is None
        sb = rt.spawn(img)
        assert sb.call("f", 1.5, 2.25) == 3.75
        assert sb.call("flag", 0, 0, 0, 0) is False
        with pytest.raises(TypeError, match="seven cannot be called from the host: .*"
                                            "argument registers"):
            sb.call("seven", 1, 2, 3, 4, 5, 6, 7)
