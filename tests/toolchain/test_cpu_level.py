"""CPU levels end to end: -march=/--target, what cpuid and __builtin_cpu_supports say inside
the sandbox, target() functions beyond the level, the image's cpu_level, and the runtime's
refusal of a level the CPU (or the tme backend) cannot run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import tmebox
from tmebox.toolchain import cc, driver, link
from tmebox.trusted.cpu import host_level, level_of_flags
from tmebox.trusted.image import CpuLevel, Image

HERE = Path(__file__).parent
DISPATCH = HERE / "levels" / "dispatch.c"
CPU_MODEL = HERE.parents[1] / "src" / "tmebox" / "toolchain" / "data" / "cpu_model.c"
LEVELS = list(CpuLevel)
needs_v3 = pytest.mark.skipif(host_level() is not CpuLevel.V3,
                              reason="this machine's CPU is not x86-64-v3")


def run_image(image: Path, backend: str = "native") -> tuple[int, str]:
    out = bytearray()
    with tmebox.Runtime(backend=backend) as rt:
        sb = rt.spawn(rt.load(image), argv=["dispatch"], stdout=out, timeout=120)
        status = sb.run()
    return status, out.decode()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[CpuLevel, tuple[Path, str]]:
    """dispatch.c built at each level: (image, what tmebox cc printed on stderr)."""
    d = tmp_path_factory.mktemp("levels")
    built = {}
    for level in LEVELS:
        image = d / f"dispatch-{level.value}.box"
        res = subprocess.run([sys.executable, "-m", "tmebox.cli", "cc", f"-march={level.value}",
                              "-O2", "-o", str(image), str(DISPATCH)], capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr
        built[level] = (image, res.stderr)
    return built


@pytest.fixture(scope="module")
def native_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    exe = tmp_path_factory.mktemp("native") / "dispatch"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(DISPATCH)], check=True)
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


def test_image_records_its_level(images) -> None:
    for level, (image, _) in images.items():
        assert Image.load(image).level is level


def test_functions_beyond_the_level_become_traps_with_a_note(images) -> None:
    notes = {lv: re.findall(r"note: \S+: (\w+)[.\w]*\(\) needs more than", err)
             for lv, (_, err) in images.items()}
    assert sorted(notes[CpuLevel.X86_64]) == ["crc", "sum_avx2"]
    assert notes[CpuLevel.V2] == ["sum_avx2"]
    assert notes[CpuLevel.V3] == []


@needs_v3
def test_dispatch_answers_from_the_image_level(images, native_output) -> None:
    result = native_output.splitlines()[-1]
    want = {
        CpuLevel.X86_64: ("sse3=0 sse4.2=0 popcnt=0 avx=0 fma=0 avx2=0 bmi2=0 lahf=0",
                          "sse4.2=0 avx2=0 v2=0 v3=0"),
        CpuLevel.V2: ("sse3=1 sse4.2=1 popcnt=1 avx=0 fma=0 avx2=0 bmi2=0 lahf=1",
                      "sse4.2=1 avx2=0 v2=1 v3=0"),
        CpuLevel.V3: ("sse3=1 sse4.2=1 popcnt=1 avx=1 fma=1 avx2=1 bmi2=1 lahf=1",
                      "sse4.2=1 avx2=1 v2=1 v3=1"),
    }
    for level, (image, _) in images.items():
        status, out = run_image(image)
        lines = out.splitlines()
        assert status == 0, out
        assert lines[0].startswith(f"cpuid: {want[level][0]}"), (level, out)
        assert lines[0].endswith("avx512f=0"), out
        assert lines[1] == f"builtin: {want[level][1]}", (level, out)
        assert lines[2] == result, (level, out)  # same answer, whichever variant ran


def test_tme_backend_runs_v2_and_refuses_v3(images, native_output) -> None:
    status, out = run_image(images[CpuLevel.V2][0], backend="tme")
    assert status == 0 and out.splitlines()[-1] == native_output.splitlines()[-1]
    with tmebox.Runtime(backend="tme") as rt, pytest.raises(
            tmebox.CpuLevelError, match=r"built for x86-64-v3, which the tme backend's CPU "
                                        r"cannot run \(it runs x86-64-v2\)"):
        rt.load(images[CpuLevel.V3][0])


def test_native_backend_refuses_a_level_the_cpu_lacks(images, monkeypatch) -> None:
    from tmebox.runtime.native.backend import NativeBackend

    monkeypatch.setattr(NativeBackend, "cpu_level", staticmethod(lambda: CpuLevel.V2))
    with tmebox.Runtime() as rt:
        with pytest.raises(tmebox.CpuLevelError, match="x86-64-v3"):
            rt.load(images[CpuLevel.V3][0])
        rt.load(images[CpuLevel.V2][0])  # its own level and below load


@needs_v3
def test_avx2_vectorised_code_runs_at_v3(tmp_path: Path) -> None:
    src = tmp_path / "vec.c"
    src.write_text("#include <stdio.h>\nstatic float a[1024], b[1024];\n"
                   "int main(void) { for (int i = 0; i < 1024; i++) { a[i] = i; b[i] = 2 * i; }\n"
                   "  for (int r = 0; r < 100; r++) for (int i = 0; i < 1024; i++)\n"
                   "    a[i] = a[i] * 0.5f + b[i];\n"
                   "  double s = 0; for (int i = 0; i < 1024; i++) s += a[i];\n"
                   "  printf(\"%.1f\\n\", s); return 0; }\n")
    image = cc.build([src], tmp_path / "vec.box", "code+data", opt="3", level="x86-64-v3")[0]
    code = Image.load(image).code.data
    assert b"\xc5\xfc" in code or b"\xc4" in code  # VEX prefixes: ymm code is there
    status, out = run_image(image)
    exe = tmp_path / "vec"
    subprocess.run(["gcc", "-O3", "-o", str(exe), str(src)], check=True)
    assert (status, out) == (0, subprocess.run([str(exe)], capture_output=True,
                                               text=True).stdout)


def test_link_takes_the_highest_level_of_its_objects(tmp_path: Path) -> None:
    src = tmp_path / "m.c"
    src.write_text("int main(void) { return 0; }\n")
    obj = cc.build([src], tmp_path / "m.o", "data", compile_only=True, level="x86-64-v3")[0]
    assert link.scan_objects([obj]).level is CpuLevel.V3
    image = cc.build([obj], tmp_path / "m.box", "data")[0]  # no level at the link
    assert Image.load(image).level is CpuLevel.V3


@pytest.mark.parametrize("arg", ["-march=haswell", "--target=x86-64-v4", "-march=znver3"])
def test_march_other_than_a_level_is_refused(arg: str) -> None:
    with pytest.raises(driver.UsageError, match="targets a CPU level, one of x86-64, "
                                                "x86-64-v2, x86-64-v3"):
        driver.parse([arg, "x.c"])


def test_march_native_and_target() -> None:
    b = driver.parse(["-march=native", "x.c"])
    assert not isinstance(b, str) and b.level is host_level()
    b = driver.parse(["--target", "x86-64-v2", "x.c"])
    assert not isinstance(b, str) and b.level is CpuLevel.V2


def test_level_of_cpuinfo_flags() -> None:
    base = {"fpu", "cx8", "cmov", "mmx", "fxsr", "sse", "sse2"}
    v2 = base | {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
    v3 = v2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
    assert level_of_flags(frozenset(base)) is CpuLevel.X86_64
    assert level_of_flags(frozenset(v2)) is CpuLevel.V2
    assert level_of_flags(frozenset(v3)) is CpuLevel.V3
    assert level_of_flags(frozenset(v3 - {"xsave"})) is CpuLevel.V2  # the kernel's AVX off
    assert level_of_flags(frozenset(v3 - {"popcnt"})) is CpuLevel.X86_64


def _gcc_feature_bit(name: str, tmp_path: Path) -> tuple[str, int, int]:
    """(symbol, byte offset, mask) that gcc's __builtin_cpu_supports(name) tests."""
    src = tmp_path / "probe.c"
    src.write_text(f'int f(void) {{ return __builtin_cpu_supports("{name}"); }}\n')
    asm = subprocess.run(["gcc", "-O2", "-S", "-o", "-", str(src)], capture_output=True,
                         text=True, check=True).stdout
    symbol = re.search(r"(__cpu_model|__cpu_features2)@GOTPCREL", asm)
    offset = re.search(r"movl\s+(\d*)\(%rax\)", asm)
    mask = re.search(r"andl\s+\$(-?\d+)", asm)
    assert symbol and offset and mask, asm
    return symbol.group(1), int(offset.group(1) or 0), int(mask.group(1)) & 0xFFFFFFFF


def test_cpu_model_feature_numbers_are_gccs(tmp_path: Path) -> None:
    """data/cpu_model.c hard-codes gcc's feature numbering; the installed gcc must agree."""
    numbers = dict(re.findall(r"\b([A-Z0-9_]+) = (\d+)", CPU_MODEL.read_text()))
    names = {"CMOV": "cmov", "MMX": "mmx", "POPCNT": "popcnt", "SSE": "sse", "SSE2": "sse2",
             "SSE3": "sse3", "SSSE3": "ssse3", "SSE4_1": "sse4.1", "SSE4_2": "sse4.2",
             "AVX": "avx", "AVX2": "avx2", "FMA": "fma", "BMI": "bmi", "BMI2": "bmi2",
             "CMPXCHG16B": "cmpxchg16b", "F16C": "f16c", "LAHF_LM": "lahf_lm",
             "LZCNT": "lzcnt", "MOVBE": "movbe", "OSXSAVE": "osxsave", "XSAVE": "xsave",
             "X86_64": "x86-64", "X86_64_V2": "x86-64-v2", "X86_64_V3": "x86-64-v3"}
    for const, feature in names.items():
        f = int(numbers[const])
        want = ("__cpu_model", 12, 1 << f) if f < 32 else \
            ("__cpu_features2", 4 * (f // 32 - 1), 1 << (f % 32))
        assert _gcc_feature_bit(feature, tmp_path) == want, const


def test_constructors_and_destructors_run(tmp_path: Path) -> None:
    src = tmp_path / "ctor.c"
    src.write_text("#include <stdio.h>\nstatic int x;\n"
                   "__attribute__((constructor)) static void a(void) { x = x * 10 + 2; }\n"
                   "__attribute__((constructor(101))) static void b(void) { x = x * 10 + 1; }\n"
                   "__attribute__((destructor)) static void z(void) { printf(\"bye %d\\n\", x); }\n"
                   "int main(void) { printf(\"x=%d\\n\", x); return 0; }\n")
    image = cc.build([src], tmp_path / "ctor.box", "code+data")[0]
    out = bytearray()
    with tmebox.Runtime() as rt:
        assert rt.spawn(rt.load(image), stdout=out).run() == 0
    assert out.decode() == "x=12\nbye 12\n"


def test_inline_asm_beyond_the_level_stays_an_error(tmp_path: Path) -> None:
    """Only what gcc generated for a target() function becomes a trap; an instruction the
    programmer wrote (inline asm, an assembly source) is refused, naming its line."""
    src = tmp_path / "ia.c"
    src.write_text("int f(int x)\n{\n  __asm__(\"popcnt %1, %0\" : \"=r\"(x) : \"r\"(x));\n"
                   "  return x;\n}\nint main(void) { return f(3) == 2 ? 0 : 1; }\n")
    with pytest.raises(tmebox.VerificationError, match="rule cpu-level: needs x86-64-v2"):
        cc.build([src], tmp_path / "ia.box", "data")
    image = cc.build([src], tmp_path / "ia2.box", "data", level="x86-64-v2")[0]
    with tmebox.Runtime(min_isolation="data") as rt:
        assert rt.spawn(rt.load(image)).run() == 0
    asm = tmp_path / "v.s"
    asm.write_text("\t.text\n\t.globl f\n\t.type f, @function\nf:\n\tvzeroupper\n\tret\n"
                   "\t.size f, .-f\n")
    with pytest.raises(tmebox.TmeboxError, match="v.s:5: `vzeroupper`: .*needs x86-64-v3"):
        cc.build([asm], tmp_path / "v.o", "data", compile_only=True)
