"""`tmebox cc`: image layout, .tmebox_info, exports, -c, errors, and end-to-end programs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from tmebox import cli
from tmebox.errors import RewriteError, ToolchainError, VerificationError
from tmebox.toolchain import cc, link
from tmebox.trusted import abi

PROGRAMS = Path(__file__).parent / "programs"
IO_PROGRAM = PROGRAMS / "echo_io.c"  # needs argv, env and stdin: not in the plain runs
MODES = abi.ISOLATION_MODES

LIB_SOURCE = """
#include <stdio.h>
#include <string.h>
static int helper(int x) { return x * 3; }
int triple(int x) { return helper(x); }
long count_vowels(const char *s, long n) {
    long c = 0;
    for (long i = 0; i < n; i++) c += strchr("aeiou", s[i]) != 0 && s[i];
    return c;
}
__attribute__((visibility("hidden"))) int hidden_fn(void) { return 1; }
const char greeting[] = "hello";
int main(void) { printf("%s %d\\n", greeting, triple(hidden_fn())); return 0; }
"""


def _elf(path: Path) -> tuple[ELFFile, object]:
    f = path.open("rb")
    return ELFFile(f), f


def _symbols(elf: ELFFile) -> dict[str, int]:
    return {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()
            if s.name and s["st_shndx"] != "SHN_UNDEF"}


def _info(elf: ELFFile) -> dict:
    return json.loads(elf.get_section_by_name(abi.INFO_SECTION).data())


# ---------------------------------------------------------------------------
# layout


@pytest.mark.parametrize("mode", MODES)
def test_image_has_the_design_layout(build_image, mode: str) -> None:
    image = build_image(LIB_SOURCE, mode)
    elf, f = _elf(image)
    with f:
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert len(loads) == 2
        code, data = loads
        assert (code["p_vaddr"], code["p_flags"]) == (0, 5)  # R+X at image offset 0
        assert data["p_flags"] == 6  # R+W, never executable
        types = [s["p_type"] for s in elf.iter_segments()]
        assert "PT_DYNAMIC" in types and "PT_TLS" not in types
        assert "PT_PHDR" not in types and "PT_INTERP" not in types

        rt = elf.get_section_by_name(abi.RT_SECTION)
        assert (rt["sh_addr"], rt["sh_size"]) == (0, abi.RT_PAGE_SIZE)
        assert rt.data() == b"\xcc" * abi.RT_PAGE_SIZE
        syms = _symbols(elf)
        assert syms[abi.RT_SYSCALL_SYMBOL] == abi.RT_SYSCALL_OFFSET
        assert syms[abi.RT_EXIT_SYMBOL] == abi.RT_EXIT_OFFSET

        code_end = code["p_memsz"]
        for sec in elf.iter_sections():
            if sec["sh_flags"] & 0x2 and sec["sh_size"]:  # allocated
                executable = bool(sec["sh_flags"] & 0x4)
                in_code = sec["sh_addr"] + sec["sh_size"] <= code_end
                assert executable == in_code, sec.name
        assert elf.get_section_by_name(".rodata")["sh_addr"] >= data["p_vaddr"]

        # The stack gap sits between the code and the data, page aligned.
        bottom, top = syms["__tmebox_stack_bottom"], syms["__tmebox_stack_top"]
        assert top - bottom == abi.DEFAULT_STACK_SIZE
        assert code_end <= bottom and bottom % abi.PAGE_SIZE == 0
        assert top <= data["p_vaddr"]

        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection):
                assert {r["r_info_type"] for r in sec.iter_relocations()} <= {8}
        if mode == "code+data":
            assert code["p_memsz"] > 0 and elf.get_section_by_name(".text")["sh_addr"] % 32 == 0


@pytest.mark.parametrize("mode", MODES)
def test_tmebox_info_and_exports(build_image, mode: str) -> None:
    image = build_image(LIB_SOURCE, mode)
    elf, f = _elf(image)
    with f:
        info = _info(elf)
        syms = _symbols(elf)
        assert not elf.get_section_by_name(abi.INFO_SECTION)["sh_flags"] & 0x2  # not loaded
    assert info["format"] == abi.IMAGE_FORMAT
    assert info["isolation"] == mode
    # Only the user's global, visible functions (not static, hidden, libc or crt ones), and
    # the call thunk of typed calls.
    assert set(info["exports"]) == {"triple", "count_vowels", "main", abi.CALL_THUNK_SYMBOL}
    assert info["signatures"]["triple"] == ["i32", ["i32"]]
    for name, off in info["exports"].items():
        assert off == syms[name]
        if mode == "code+data":
            assert off % abi.BUNDLE_SIZE == 0
    assert info["entry"] == syms["_start"] == elf.header["e_entry"]
    assert info["tp_slot"] == syms[abi.TP_SYMBOL]
    assert info["stack_size"] == abi.DEFAULT_STACK_SIZE
    assert info["stack_top"] - info["stack_bottom"] == abi.DEFAULT_STACK_SIZE


def test_tls_gets_a_pt_tls_segment(build_image) -> None:
    image = build_image(PROGRAMS / "tls.c", "data")
    elf, f = _elf(image)
    with f:
        (tls,) = [s for s in elf.iter_segments() if s["p_type"] == "PT_TLS"]
        data = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"][1]
        assert data["p_vaddr"] <= tls["p_vaddr"] < data["p_vaddr"] + data["p_memsz"]


def test_stack_size_is_configurable(build_image) -> None:
    image = build_image("int main(void) { return 0; }", "data", stack_size=64 << 10)
    elf, f = _elf(image)
    with f:
        assert _info(elf)["stack_size"] == 64 << 10
    with pytest.raises(ToolchainError, match="multiple"):
        build_image("int main(void) { return 0; }", "data", name="odd", stack_size=1000)


def test_image_without_main_only_exports(build_image) -> None:
    image = build_image("int add(int a, int b) { return a + b; }", "code+data")
    elf, f = _elf(image)
    with f:
        syms = _symbols(elf)
        assert _info(elf)["exports"] == {"add": syms["add"],
                                         abi.CALL_THUNK_SYMBOL: syms[abi.CALL_THUNK_SYMBOL]}


def test_native_isolation_is_not_an_image_mode(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 0; }")
    with pytest.raises(ToolchainError, match="isolation"):
        cc.build([src], tmp_path / "p.box", isolation="native")


# ---------------------------------------------------------------------------
# several sources, -c, .s input


def test_several_sources_and_objects_link(tmp_path: Path, sandbox_libc,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.c").write_text("int twice(int x);\nint main(void) { return twice(21); }\n")
    (tmp_path / "b.c").write_text("int twice(int x) { return 2 * x; }\n")
    (tmp_path / "c.s").write_text(
        "\t.text\n\t.globl seven\n\t.type seven,@function\n\t.p2align 5\n"
        "seven:\n\tmovl $7, %eax\n\tret\n")
    objs = cc.build([Path("b.c"), Path("c.s")], None, "code+data", compile_only=True)
    assert objs == [Path("b.o"), Path("c.o")]
    for o in objs:
        assert o.read_bytes()[:4] == b"\x7fELF"
    (out,) = cc.build([Path("a.c"), *objs], None, "code+data")
    assert out == Path("a.box")
    elf, f = _elf(out)
    with f:
        assert set(_info(elf)["exports"]) == {"main", "twice", "seven", abi.CALL_THUNK_SYMBOL}


def test_compile_only_with_output_name(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "x.c"
    src.write_text("int f(void) { return 1; }\n")
    assert cc.build([src], tmp_path / "y.o", "data", compile_only=True) == [tmp_path / "y.o"]
    assert (tmp_path / "y.o").is_file()
    with pytest.raises(ToolchainError, match="exactly one"):
        cc.build([src, src], tmp_path / "z.o", "data", compile_only=True)


def test_objects_are_instrumented(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "st.c"
    src.write_text("void st(long *p, long v) { p[3] = v; }\n")
    (obj,) = cc.build([src], tmp_path / "st.o", "data", compile_only=True)
    dis = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True).stdout
    assert "%gs:0x18(%edi)" in dis


def test_defines_and_include_dirs(tmp_path: Path, build_image) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "val.h").write_text("#define VAL (BASE + 1)\n")
    image = build_image('#include "val.h"\nint get(void) { return VAL; }\n', "data",
                        include_dirs=[inc], defines=["BASE=41"])
    assert image.is_file()


# ---------------------------------------------------------------------------
# errors


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".box")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError, match="nope.c: no such file"):
        cc.build([tmp_path / "nope.c"], tmp_path / "o.box", "data")


def test_unsupported_input_and_options(tmp_path: Path, sandbox_libc) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("hi")
    with pytest.raises(ToolchainError, match="unsupported input type .txt"):
        cc.build([txt], tmp_path / "o.box", "data")
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 0; }")
    with pytest.raises(ToolchainError, match="unsupported isolation"):
        cc.build([src], tmp_path / "o.box", "code-only")
    with pytest.raises(ToolchainError, match="-O9"):
        cc.build([src], tmp_path / "o.box", "data", opt="9")
    with pytest.raises(ToolchainError, match="-lssl: no libssl.a in the -L directories"):
        cc.build([src], tmp_path / "o.box", "data", libs=["ssl"])
    with pytest.raises(ToolchainError, match="unsupported compiler"):
        cc.build([src], tmp_path / "o.box", "data", compiler="tcc")
    assert _leftovers(tmp_path) == []


def test_syntax_error_names_file_and_line(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "bad.c"
    src.write_text("int main(void)\n{\n    return 0 +;\n}\n")
    with pytest.raises(ToolchainError) as e:
        cc.build([src], tmp_path / "bad.box", "code+data")
    assert f"{src}:3:" in str(e.value)
    assert _leftovers(tmp_path) == []


def test_avx512_inline_asm_is_rejected_with_c_line(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "avx.c"
    src.write_text("void f(void)\n{\n  __asm__ volatile(\"nop\\n\\t"
                   "vpaddd %%zmm0, %%zmm1, %%zmm2\" ::: \"memory\");\n}\n")
    with pytest.raises(RewriteError) as e:
        cc.build([src], tmp_path / "avx.box", "data")
    assert str(e.value).startswith(f"{src}:3: in inline assembly: ")
    assert "zmm" in str(e.value)
    assert _leftovers(tmp_path) == []


def test_undefined_symbol_is_a_link_error(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "u.c"
    src.write_text("int missing(void);\nint main(void) { return missing(); }\n")
    with pytest.raises(ToolchainError, match="missing"):
        cc.build([src], tmp_path / "u.box", "data")
    assert _leftovers(tmp_path) == []


def test_rejected_image_is_never_left_behind(tmp_path: Path, sandbox_libc) -> None:
    # A raw `syscall` encoded as data bytes in .text: the rewriter cannot see it,
    # the verifier must reject the image, and nothing may remain at the output.
    src = tmp_path / "raw.s"
    src.write_text("\t.text\n\t.globl f\n\t.type f,@function\n\t.p2align 5\n"
                   "f:\n\t.byte 0x0f, 0x05\n\tret\n")
    out = tmp_path / "raw.box"
    with pytest.raises(VerificationError, match="raw.box"):
        cc.build([src], out, "data")
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_failed_rebuild_keeps_no_stale_output(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    out = tmp_path / "p.box"
    cc.build([src], out, "data")
    good = out.read_bytes()
    src.write_text("int main(void) { return 0 +; }\n")
    with pytest.raises(ToolchainError):
        cc.build([src], out, "data")
    assert out.read_bytes() == good  # the old image is untouched, not half-overwritten


def test_cli_reports_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cc", str(tmp_path / "gone.c"), "-o", str(tmp_path / "g.box")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tmebox cc: {tmp_path / 'gone.c'}: no such file"]


def test_cli_builds_an_image(tmp_path: Path, sandbox_libc,
                             capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 3; }\n")
    out = tmp_path / "p.box"
    assert cli.main(["cc", "--isolation", "data", "-O1", str(src), "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""  # (as gcc: nothing on stdout)
    assert out.read_bytes()[:4] == b"\x7fELF"  # a .box name: a bare image, no #! line


def test_linker_script_has_no_unfilled_placeholders() -> None:
    for tls in (False, True):
        assert "@" not in link.linker_script(tls=tls)


# ---------------------------------------------------------------------------
# end-to-end programs: sandboxed output == the same program built natively


PROGRAM_NAMES = sorted(p.stem for p in PROGRAMS.glob("*.c") if p != IO_PROGRAM)


@pytest.fixture(scope="module")
def native_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("native")
    outs = {}
    for name in PROGRAM_NAMES:
        exe = cc.build_native([PROGRAMS / f"{name}.c"], d / name)
        res = subprocess.run([str(exe)], capture_output=True, timeout=60)
        assert res.returncode == 0, (name, res.stderr)
        outs[name] = res.stdout
    return outs


@pytest.fixture(scope="module")
def runtime():
    from tmebox.runtime.api import Runtime

    with Runtime(backend="native", min_isolation="data") as rt:  # tests run both modes
        yield rt


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PROGRAM_NAMES)
def test_program_runs_like_native(name: str, mode: str, build_image, native_outputs, runtime
                                  ) -> None:
    image = build_image(PROGRAMS / f"{name}.c", mode)
    from tmebox.trusted import verifier

    assert verifier.verify_file(image).ok
    out = bytearray()
    sb = runtime.spawn(runtime.load(image), argv=[name], stdout=out, timeout=60)
    try:
        assert sb.run() == 0
    finally:
        sb.destroy()
    assert bytes(out) == native_outputs[name]
    assert len(out) > 10


def test_exports_are_callable(build_image, runtime) -> None:
    image = build_image(LIB_SOURCE, "code+data")
    sb = runtime.spawn(runtime.load(image))
    try:
        assert sb.call("triple", 14) == 42
        buf = sb.alloc(64)
        sb.memory.write(buf, b"education")
        assert sb.call("count_vowels", buf, 9) == 5
    finally:
        sb.destroy()


def test_output_default_name(tmp_path: Path, sandbox_libc,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hello.c").write_text("int main(void) { return 0; }\n")
    assert cc.build([Path("hello.c")], None, "data") == [Path("hello.box")]
    assert os.access("hello.box", os.X_OK)


def test_toolchain_doc_examples_run(tmp_path: Path, sandbox_libc,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    doc = Path(__file__).resolve().parents[2] / "docs" / "toolchain.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{doc}:block{i}", "exec"), namespace)
    assert (tmp_path / "square.box").is_file()


def test_unwritable_output_is_a_clear_error(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    (tmp_path / "dir.box").mkdir()
    with pytest.raises(ToolchainError, match="cannot write .*dir.box"):
        cc.build([src], tmp_path / "dir.box", "data")
    (tmp_path / "dir.o").mkdir()
    with pytest.raises(ToolchainError, match="dir.o"):
        cc.build([src], tmp_path / "dir.o", "data", compile_only=True)


_MINIMAL_ASM = """
\t.section .tmebox_rt,"ax",@progbits
\t.globl __tmebox_rt_syscall
__tmebox_rt_syscall:
\t.fill 32,1,0xcc
\t.globl __tmebox_rt_exit
__tmebox_rt_exit:
\t.fill 4064,1,0xcc
\t.text
\t.globl _start
_start:
\tret
\t.globl odd
odd:
\tret
\t.section .moved,"ax",@progbits
\tnop
\t.data
\t.globl __tmebox_tp
__tmebox_tp:
\t.quad 0
"""


def _link_with_script(tmp_path: Path, script: str) -> Path:
    (tmp_path / "m.s").write_text(_MINIMAL_ASM)
    subprocess.run(["as", "--64", "-o", str(tmp_path / "m.o"), str(tmp_path / "m.s")],
                   check=True)
    (tmp_path / "s.ld").write_text(script)
    out = tmp_path / "m.elf"
    subprocess.run(["ld", "-static", "-pie", "--no-dynamic-linker", "-z", "norelro",
                    "-T", str(tmp_path / "s.ld"), "-o", str(out), str(tmp_path / "m.o")],
                   check=True, capture_output=True)
    return out


def test_check_image_accepts_the_tmebox_script(tmp_path: Path) -> None:
    elf = _link_with_script(tmp_path, link.linker_script())
    info = link.check_image(elf, isolation="data", export_names=[],
                            stack_size=abi.DEFAULT_STACK_SIZE)
    assert info["entry"] > 0 and info["exports"] == {}


def test_check_image_rejects_code_in_the_data_segment(tmp_path: Path) -> None:
    script = link.linker_script().replace(
        "  .rodata : {", "  .text.moved : { *(.moved) } :data\n  .rodata : {")
    elf = _link_with_script(tmp_path, script)
    with pytest.raises(ToolchainError, match="executable section .text.moved lies outside"):
        link.check_image(elf, isolation="data", export_names=[],
                         stack_size=abi.DEFAULT_STACK_SIZE)


def test_check_image_rejects_a_third_load_segment(tmp_path: Path) -> None:
    script = link.linker_script().replace("  data PT_LOAD FLAGS(6);",
                                          "  data PT_LOAD FLAGS(6);\n  more PT_LOAD FLAGS(6);")
    bss = ".bss : { *(.dynbss) *(.bss .bss.* .gnu.linkonce.b.*) *(COMMON) }"
    script = script.replace(f"{bss} :data", f"{bss} :more")
    (tmp_path / "m.s").write_text(_MINIMAL_ASM + "\t.bss\n\t.zero 64\n")
    elf = _link_with_script(tmp_path, script)
    with pytest.raises(ToolchainError, match="3 PT_LOAD"):
        link.check_image(elf, isolation="data", export_names=[],
                         stack_size=abi.DEFAULT_STACK_SIZE)


def test_check_image_rejects_misaligned_exports_in_code_data(tmp_path: Path) -> None:
    elf = _link_with_script(tmp_path, link.linker_script())
    with pytest.raises(ToolchainError, match="not 32-byte aligned in code\\+data mode: odd$"):
        link.check_image(elf, isolation="code+data", export_names=["_start", "odd"],
                         stack_size=abi.DEFAULT_STACK_SIZE)


def test_preprocessed_assembly_input(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "k.S"
    src.write_text("#define VALUE 42\n\t.text\n\t.globl k\n\t.type k,@function\n\t.p2align 5\n"
                   "k:\n\tmovl $VALUE, %eax\n\tmovq %rax, 8(%rdi)\n\tret\n")
    (obj,) = cc.build([src], tmp_path / "k.o", "code+data", compile_only=True)
    dis = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True).stdout
    assert "mov    $0x2a,%eax" in dis
    assert "%gs:0x8(%edi)" in dis  # the store went through the rewriter
    # code+data: ret returns through the masked address it pushed
    assert "push   %r11\n" in dis.split("<k>:")[1].split("ret")[0]


@pytest.mark.parametrize("mode", MODES)
def test_argv_env_stdin_stderr_and_exit_status(mode: str, build_image, runtime,
                                               tmp_path: Path) -> None:
    """The crt hands argv/envp to main; exit status, stdout and stderr match native."""
    src = IO_PROGRAM
    argv = ["echo_io", "first arg", "ü-ñ"]
    stdin = b"alpha\nbeta gamma\ndelta\n"
    native = cc.build_native([src], tmp_path / "echo_native")
    ref = subprocess.run([str(native), *argv[1:]], input=stdin, capture_output=True,
                         env={"TMEBOX_WHO": "tenant-7"}, timeout=60)
    assert ref.returncode == 7
    out, err = bytearray(), bytearray()
    sb = runtime.spawn(runtime.load(build_image(src, mode)), argv=argv,
                       envp=["TMEBOX_WHO=tenant-7"], stdin=stdin, stdout=out, stderr=err)
    try:
        assert sb.run() == 7
    finally:
        sb.destroy()
    assert bytes(out) == ref.stdout
    assert bytes(err) == ref.stderr == b"read 3 lines\n"


def test_compiler_warnings_are_shown(tmp_path: Path, sandbox_libc,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "w.c"
    src.write_text("int f(void) { int unused; return 0; }\n")
    cc.build([src], tmp_path / "w.o", "data", compile_only=True)
    assert "w.c:1" not in capfd.readouterr().err  # no warnings asked for, none shown
    src.write_text('#warning "careful"\nint f(void) { return 0; }\n')
    cc.build([src], tmp_path / "w.o", "data", compile_only=True)
    assert f"{src}:1:2: warning: #warning" in capfd.readouterr().err


def test_assembler_errors_keep_the_rewritten_text(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "a.s"
    src.write_text("\t.text\nf:\n\tmovl $1, %eax\n\t.bogus_directive 3\n")
    with pytest.raises(ToolchainError, match="assembling .*a.s") as e:
        cc.build([src], tmp_path / "a.o", "data", compile_only=True)
    kept = Path(str(e.value).rsplit("kept in ", 1)[1].rstrip(")"))
    try:
        assert ".bogus_directive" in kept.read_text()
    finally:
        kept.unlink()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("opt", ["0", "3", "s"])
@pytest.mark.parametrize("name", ["printf", "setjmp", "funcptr"])
def test_other_optimisation_levels(name: str, opt: str, build_image, native_outputs,
                                   runtime) -> None:
    """gcc emits different forms at -O0/-O3/-Os (frame pointers, leave, vector code)."""
    image = build_image(PROGRAMS / f"{name}.c", "code+data", opt=opt, name=f"{name}-O{opt}")
    out = bytearray()
    sb = runtime.spawn(runtime.load(image), argv=[name], stdout=out, timeout=60)
    try:
        assert sb.run() == 0
    finally:
        sb.destroy()
    assert bytes(out) == native_outputs[name]


def test_objects_cannot_add_to_the_runtime_page(tmp_path: Path, sandbox_libc) -> None:
    src = tmp_path / "rt.s"
    src.write_text('\t.section .tmebox_rt,"ax",@progbits\n\t.globl sneaky\n'
                   "sneaky:\n\tnop\n\tret\n")
    out = tmp_path / "rt.box"
    with pytest.raises(ToolchainError, match="one page of int3"):
        cc.build([src], out, "data")
    assert not out.exists()
