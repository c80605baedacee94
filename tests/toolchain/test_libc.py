"""The sandbox libc: fetching (hash-checked), the build's changes to musl, caching."""

from __future__ import annotations

import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from tmebox.errors import LibcError
from tmebox.toolchain import libc
from tmebox.trusted import abi


def test_prefix_has_library_headers_and_crt(sandbox_libc: dict[str, Path]) -> None:
    assert set(sandbox_libc) == set(abi.ISOLATION_MODES) == set(libc.MODES)
    for mode, prefix in sandbox_libc.items():
        assert prefix == libc.libc_dir(mode)
        assert (prefix / "lib" / "libc.a").stat().st_size > 1_000_000
        assert (prefix / "lib" / libc.CRT_OBJECT).is_file()
        assert (prefix / "include" / "stdio.h").is_file()
        assert (prefix / "include" / "bits" / "syscall.h").is_file()


def _archive_symbols(archive: Path) -> tuple[set[str], set[str]]:
    out = subprocess.run(["nm", str(archive)], capture_output=True, text=True,
                         check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("U", "w"):
            undefined.add(parts[1])
        elif len(parts) == 3:
            defined.add(parts[2])
    return defined, undefined


@pytest.mark.parametrize("mode", libc.MODES)
def test_libc_needs_no_libgcc(sandbox_libc: dict[str, Path], mode: str) -> None:
    defined, undefined = _archive_symbols(sandbox_libc[mode] / "lib" / "libc.a")
    # what the linker, the linker script, the tmebox crt, the image glue and the runtime page define
    provided = {"_GLOBAL_OFFSET_TABLE_", "_DYNAMIC", "__init_array_start", "__init_array_end",
                "__fini_array_start", "__fini_array_end", abi.TP_SYMBOL, abi.RT_SYSCALL_SYMBOL,
                abi.CPUID_SYMBOL}
    assert undefined - defined - provided == set()
    assert {"__udivti3", "__umodti3", "__muldc3", "__mulsc3", "__mulxc3",
            "__popcountdi2"} <= defined


@pytest.mark.parametrize("mode", libc.MODES)
def test_sandbox_libc_is_rewritten(sandbox_libc: dict[str, Path], mode: str,
                                   tmp_path: Path) -> None:
    lib = sandbox_libc[mode] / "lib" / "libc.a"
    subprocess.run(["ar", "x", str(lib), "memcpy.lo", "setjmp.lo", "syscall_cp.lo"],
                   cwd=tmp_path, check=True)
    dis = {p.stem: subprocess.run(["objdump", "-d", str(p)], capture_output=True, text=True,
                                  check=True).stdout for p in tmp_path.iterdir()}
    # musl's rep-movs memcpy is confined, setjmp no longer touches %r14, syscalls are calls
    assert "lea    (%r14,%rdi,1),%rdi" in dis["memcpy"]
    setjmp_lines = [ln.strip() for ln in dis["setjmp"].splitlines()]
    assert not [ln for ln in setjmp_lines if re.search(r",%r14[dwb]?$", ln)]  # no r14 writes
    assert not [ln for ln in setjmp_lines if "%r14,%gs:" in ln]  # and r14 is not saved
    code = [ln.split("\t")[-1] for ln in dis["syscall_cp"].splitlines() if "\t" in ln]
    assert not [ln for ln in code if ln.startswith("syscall")]
    assert [ln for ln in code if ln.startswith("call")]
    if mode == "code+data":
        assert "and    $0xffffffe0,%r11d" in dis["setjmp"]


def test_native_libc_is_plain_musl() -> None:
    prefix = libc.ensure_libc(libc.NATIVE)
    for crt in ("crt1.o", "crti.o", "crtn.o", "libc.a"):
        assert (prefix / "lib" / crt).is_file()
    defined, _ = _archive_symbols(prefix / "lib" / "libc.a")
    assert "__udivti3" not in defined  # no tmebox additions


def test_unknown_mode() -> None:
    with pytest.raises(LibcError, match="unknown libc mode 'fast'"):
        libc.ensure_libc("fast")


def test_build_key_follows_the_rewriter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "toolchain"
    (tool / "data").mkdir(parents=True)
    for f in libc._key_files():
        dest = tool / f.relative_to(libc._TOOLCHAIN_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    monkeypatch.setattr(libc, "_TOOLCHAIN_DIR", tool)
    before, native_before = libc.build_key(), libc.build_key(libc.NATIVE)
    assert libc.build_key() == before
    rewriter = tool / "rewriter.py"
    rewriter.write_text(rewriter.read_text() + "\n# changed\n")
    assert libc.build_key() != before
    assert libc.build_key(libc.NATIVE) == native_before  # plain musl needs no rebuild
    crt = tool / "data" / "crt.c"
    crt.write_text(crt.read_text() + "\n")
    changed = libc.build_key()
    assert changed != before and libc.build_key("code+data") == changed
    monkeypatch.setenv("TMEBOX_SHARED_CACHE", str(tmp_path / "cache"))
    assert libc.libc_dir("data") == tmp_path / "cache" / "libc" / \
        f"{libc.MUSL_VERSION}-{libc.build_key()}" / "data"


# ---------------------------------------------------------------------------
# fetching


def _fake_tarball(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("musl-1.2.3/README")
        tf.addfile(info)


def test_tarball_with_wrong_hash_is_refused_and_deleted(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMEBOX_SHARED_CACHE", str(tmp_path))
    tarball = tmp_path / "src" / libc.MUSL_TARBALL
    _fake_tarball(tarball)
    calls = []

    def fake_apt(args, cwd=None):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(libc, "_apt", fake_apt)
    with pytest.raises(LibcError, match="expected " + libc.MUSL_SHA256):
        libc.fetch_musl()
    assert calls == [["source", "--download-only", f"musl={libc.MUSL_DEBIAN_VERSION}"]]
    assert not tarball.exists()


def test_no_apt_gives_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMEBOX_SHARED_CACHE", str(tmp_path))
    monkeypatch.setattr(libc.shutil, "which", lambda name: None)
    with pytest.raises(LibcError, match=f"apt-get is not available.*{libc.MUSL_SHA256}"):
        libc.fetch_musl()


def test_cached_tarball_is_used_without_apt(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = libc.fetch_musl()  # the real, hash-checked one (cached by the fixture's build)
    monkeypatch.setenv("TMEBOX_SHARED_CACHE", str(tmp_path))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / libc.MUSL_TARBALL).write_bytes(real.read_bytes())
    monkeypatch.setattr(libc, "_apt", lambda *a, **k: pytest.fail("apt-get was called"))
    assert libc.fetch_musl() == tmp_path / "src" / libc.MUSL_TARBALL


def test_deb_src_entries_mirror_the_deb_entries(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://disabled.example/\nSuites: x\nComponents: main\n"
        "Enabled: no\n")
    (tmp_path / "extra.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg] http://one.example/debian bookworm main contrib\n")
    monkeypatch.setattr(libc, "APT_SOURCES_DIR", tmp_path)
    monkeypatch.setattr(libc, "OUR_APT_SOURCE", tmp_path / "tmebox-src.sources")
    stanzas = libc._deb_src_stanzas()
    assert stanzas[0] == ("Types: deb-src\nURIs: http://mirror.example/debian\n"
                          "Suites: bookworm bookworm-updates\nComponents: main\n"
                          "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg")
    assert stanzas[1] == ("Types: deb-src\nURIs: http://one.example/debian\nSuites: bookworm\n"
                          "Components: main contrib\nSigned-By: /k.gpg")
    assert len(stanzas) == 2


def test_failed_build_leaves_nothing_usable(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMEBOX_SHARED_CACHE", str(tmp_path))
    monkeypatch.setattr(libc, "fetch_musl", lambda progress=False: tmp_path / "t.tar.gz")

    def broken_build(tarball: Path, work: Path, mode: str, progress: bool) -> Path:
        (work / "prefix" / "lib").mkdir(parents=True)
        (work / "prefix" / "lib" / "libc.a").write_bytes(b"half")
        raise LibcError("compiler exploded")

    monkeypatch.setattr(libc, "_build", broken_build)
    dest = libc.libc_dir("data")
    stale = dest.parent / ".build-data-killed"  # a build killed half way
    (stale / "prefix" / "lib").mkdir(parents=True)
    with pytest.raises(LibcError, match="exploded"):
        libc.ensure_libc("data")
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == [".data.lock"]


# ---------------------------------------------------------------------------
# make's CC in the sandbox modes


def _run_wrapper(tmp_path: Path, args: list[str]) -> tuple[int, str]:
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text('#!/bin/sh\necho "$@"\n')
    fake_cc.chmod(0o755)
    wrapper = tmp_path / "wrap"
    wrapper.write_text(libc._WRAPPER.replace("@CC@", str(fake_cc)))
    wrapper.chmod(0o755)
    res = subprocess.run([str(wrapper), *args], capture_output=True, text=True, cwd=tmp_path)
    return res.returncode, (res.stdout + res.stderr).strip()


def test_wrapper_turns_compiles_into_assembly(tmp_path: Path) -> None:
    code, out = _run_wrapper(tmp_path, ["-std=c99", "-pipe", "-Wa,--noexecstack", "-c",
                                        "-o", "obj/a b.lo", "src/x.c", "-DX=1"])
    assert code == 0
    assert out == "-std=c99 src/x.c -DX=1 -S -o obj/a b.lo"
    code, out = _run_wrapper(tmp_path, ["-c", "-o", "o.lo", "s.S", "-Iinc"])
    assert out == "s.S -Iinc -E -P -o o.lo"
    (tmp_path / "m.s").write_text("movl $1, %eax\n")
    code, out = _run_wrapper(tmp_path, ["-c", "-o", "m.lo", "m.s"])
    assert code == 0 and (tmp_path / "m.lo").read_text() == "movl $1, %eax\n"
    code, out = _run_wrapper(tmp_path, ["-c", "-o", "x.o"])
    assert code == 2 and "no C or assembly source" in out


def test_patches_apply_to_pristine_musl(tmp_path: Path) -> None:
    with tarfile.open(libc.fetch_musl()) as tf:
        tf.extractall(tmp_path, filter="data")
    tree = tmp_path / f"musl-{libc.MUSL_VERSION}"
    libc._patch_tree(tree)
    assert not (tree / "src/setjmp/x86_64/longjmp.s").exists()
    assert not (tree / "src/thread/x86_64/clone.s").exists()
    assert "%r14" not in (tree / "src/setjmp/x86_64/setjmp.s").read_text().split("\n\t.text")[1]
    assert "%r11" not in (tree / "src/thread/x86_64/syscall_cp.s").read_text().split(
        "\t.text")[1]
    assert '"hlt"' not in (tree / "arch/x86_64/atomic_arch.h").read_text()
    assert (tree / "src/tmebox/builtins.c").is_file()


def test_tmebox_setup_reports_both_modes(sandbox_libc: dict[str, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tmebox import cli

    assert cli.main(["setup"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"sandbox libc ({m}): {sandbox_libc[m]}" for m in libc.MODES]
