"""Files by capability, on both backends: what a sandbox may do beneath its preopened
directories, and every way out that must fail (docs/runtime.md, "Files")."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import tmebox
from tmebox.errors import TmeboxError

BACKENDS = ["native", "tme"]
E = {n: f"E{getattr(errno, n)}" for n in ("ENOENT", "EACCES", "EROFS", "EMFILE", "EBADF",
                                          "ELOOP", "EXDEV", "EINVAL", "ENOTDIR", "EBUSY")}


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    from tmebox.toolchain import cc

    d = tmp_path_factory.mktemp("files")
    (img,) = cc.build([Path(__file__).parent / "c" / "files.c"], d / "files.box",
                      isolation="code+data")
    return img


@pytest.fixture(params=BACKENDS)
def rt(request):
    with tmebox.Runtime(backend=request.param, max_sandboxes=8) as runtime:
        yield runtime


@pytest.fixture
def tree(tmp_path) -> Path:
    """data/ (given to the sandbox) next to secret/ (not given)."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.txt").write_text("alpha")
    (tmp_path / "data" / "sub" / "b.txt").write_text("beta")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("SECRET")
    (tmp_path / "out").mkdir()
    return tmp_path


def steps(rt, image, dirs, *args, **spawn) -> list[str]:
    out = bytearray()
    sb = rt.spawn(rt.load(image), argv=["files", *args], stdout=out, dirs=dirs, **spawn)
    try:
        assert sb.run() == 0
    finally:
        sb.destroy()
    return out.decode().splitlines()


def test_reading_a_read_only_directory(rt, image, tree):
    dirs = {"/data": str(tree / "data")}
    assert steps(rt, image, dirs, "cat:/data/a.txt", "cat:/data/sub/b.txt", "ls:/data",
                 "stat:/data/a.txt", "stat:/data/sub", "seek:/data/a.txt:2",
                 "access:/data/a.txt:r") == [
        "alpha", "beta", "a.txt sub", "file 5", f"dir {(tree / 'data' / 'sub').stat().st_size}",
        "pha 5", "ok"]


def test_a_read_only_directory_refuses_every_change(rt, image, tree):
    dirs = {"/data": str(tree / "data")}
    assert steps(rt, image, dirs, "write:/data/a.txt:x", "append:/data/new:x", "mkdir:/data/d",
                 "rm:/data/a.txt", "rmdir:/data/sub", "mv:/data/a.txt:/data/z",
                 "access:/data/a.txt:w", "open:/data/a.txt:w") == [E["EROFS"]] * 8
    assert (tree / "data" / "a.txt").read_text() == "alpha"
    assert sorted(p.name for p in (tree / "data").iterdir()) == ["a.txt", "sub"]


def test_a_writable_directory(rt, image, tree):
    dirs = {"/data": str(tree / "data"), "/out": (str(tree / "out"), "rw")}
    assert steps(rt, image, dirs, "write:/out/r.txt:hello", "append:/out/r.txt: world",
                 "cat:/out/r.txt", "mkdir:/out/d", "mv:/out/r.txt:/out/d/s.txt", "ls:/out/d",
                 "write:/out/gone:x", "rm:/out/gone", "mkdir:/out/e", "rmdir:/out/e",
                 "ls:/out", "mv:/data/a.txt:/out/a.txt") == [
        "ok", "ok", "hello world", "ok", "ok", "s.txt", "ok", "ok", "ok", "ok", "d",
        E["EROFS"]]
    assert (tree / "out" / "d" / "s.txt").read_text() == "hello world"


@pytest.mark.parametrize("path", [
    "/data/../secret/key", "/data/sub/../../secret/key", "/data/./../secret/key",
    "/data/up/key",  # a relative symlink to ../secret
    "/data/abs/key",  # an absolute symlink to secret/
    "/data/sub/deep/../../../secret/key",
])
def test_no_way_out_of_a_preopen(rt, image, tree, path):
    os.symlink("../secret", tree / "data" / "up")
    os.symlink(str(tree / "secret"), tree / "data" / "abs")
    os.symlink(str(tree / "secret" / "key"), tree / "data" / "keylink")
    (tree / "data" / "sub" / "deep").mkdir()
    dirs = {"/data": (str(tree / "data"), "rw")}
    got = steps(rt, image, dirs, f"cat:{path}", f"stat:{path}", f"write:{path}:owned",
                f"rm:{path}", f"mv:{path}:/data/stolen", f"access:{path}:r")
    assert "SECRET" not in got
    assert all(line.startswith("E") for line in got), got
    assert (tree / "secret" / "key").read_text() == "SECRET"
    assert not (tree / "data" / "stolen").exists()


def test_a_symlink_out_is_only_a_name(rt, image, tree):
    os.symlink(str(tree / "secret" / "key"), tree / "data" / "keylink")
    got = steps(rt, image, {"/data": (str(tree / "data"), "rw")}, "cat:/data/keylink",
                "write:/data/keylink:owned", "append:/data/keylink:owned",
                "mv:/data/keylink:/data/moved", "cat:/data/moved", "rm:/data/moved")
    assert got == [E["EACCES"]] * 3 + ["ok", E["EACCES"], "ok"]
    assert (tree / "secret" / "key").read_text() == "SECRET"


def test_paths_outside_every_preopen_do_not_exist(rt, image, tree):
    got = steps(rt, image, {"/data": str(tree / "data")}, f"cat:{tree}/secret/key",
                "cat:/etc/passwd", "ls:/", "cat:/proc/self/environ", "stat:/dat",
                "mkdir:/new", "cat:dat/a.txt")
    assert got == [E["ENOENT"]] * 7


def test_symlinks_that_stay_inside_work_and_readlink_tells_the_truth(rt, image, tree):
    os.symlink("sub/b.txt", tree / "data" / "inside")
    os.symlink("../secret/key", tree / "data" / "out")
    assert steps(rt, image, {"/data": str(tree / "data")}, "cat:/data/inside",
                 "lstat:/data/inside", "readlink:/data/out", "cat:/data/out") == [
        "beta", "link 9", "../secret/key", E["EACCES"]]


def test_fifos_and_devices_do_not_open(rt, image, tree):
    os.mkfifo(tree / "data" / "fifo")
    os.symlink("/dev/zero", tree / "data" / "zero")
    got = steps(rt, image, {"/data": str(tree / "data")}, "cat:/data/fifo", "cat:/data/zero")
    assert got == [E["EACCES"], E["EACCES"]]  # and the FIFO open did not block the host


def test_working_directory_and_relative_paths(rt, image, tree):
    dirs = {"/data": str(tree / "data")}
    assert steps(rt, image, dirs, "cd:/data/sub", "cat:b.txt", "cat:../a.txt",
                 "cat:../../secret/key", "cd:/nowhere", "cd:..", "cat:a.txt") == [
        "/data/sub", "beta", "alpha", E["ENOENT"], E["ENOENT"], "/data", "alpha"]


def test_a_preopen_at_the_root_makes_relative_paths_work(rt, image, tree):
    assert steps(rt, image, {"/": str(tree / "data")}, "cat:a.txt", "cat:/sub/b.txt",
                 "cat:/../secret/key") == ["alpha", "beta", E["ENOENT"]]


def test_spawn_cwd_starts_beneath_a_preopen(rt, image, tree):
    dirs = {"/data": str(tree / "data")}
    assert steps(rt, image, dirs, "cat:b.txt", "cat:../a.txt", cwd="/data/sub") == [
        "beta", "alpha"]
    for bad in ("/elsewhere", "data", "/data/../secret", 7):
        with pytest.raises(TmeboxError, match="cwd"):
            rt.spawn(rt.load(image), dirs=dirs, cwd=bad)


def test_nested_preopens_dotdot_takes_the_outer_and_its_rights(rt, image, tree):
    # "/" read-only holding "/sub" read-write (what `tmebox exec` gives): a path that climbs
    # out of /sub is the outer preopen's, so it reads, but writes stay refused; nothing
    # climbs out of "/" itself.
    dirs = {"/": str(tree / "data"), "/sub": (str(tree / "data" / "sub"), "rw")}
    assert steps(rt, image, dirs, "write:/sub/f:1", "cat:/sub/../a.txt",
                 "write:/sub/../x:2", "cat:/sub/../../secret/key", "cat:f",
                 cwd="/sub") == ["ok", "alpha", E["EROFS"], E["ENOENT"], "1"]
    # a symlink inside the writable one that points up: lexically beneath it, so it is the
    # inner preopen's, and the kernel refuses to follow it out (no write into the outer)
    os.symlink("..", tree / "data" / "sub" / "up")
    assert steps(rt, image, dirs, "write:/sub/up/x:3", "write:up/a.txt:4", "cat:/a.txt",
                 cwd="/sub") == [E["EACCES"], E["EACCES"], "alpha"]
    assert not (tree / "data" / "x").exists()


def test_descriptors_are_bounded_and_the_streams_are_descriptors(rt, image, tree):
    dirs = {"/data": str(tree / "data"), "/out": (str(tree / "out"), "rw")}
    assert steps(rt, image, dirs, "openmany:/data/a.txt", fd_limit=10) == [f"7 {E['EMFILE']}"]
    assert steps(rt, image, dirs, "fstat:0", "fstat:1", "dup2out:/out/o.txt:redirected",
                 "close:7", "read:3") == ["fifo", "fifo", "ok", E["EBADF"], E["EBADF"]]
    assert (tree / "out" / "o.txt").read_text() == "redirected\n"


def test_a_descriptor_means_nothing_in_another_sandbox(rt, image, tree):
    img = rt.load(image)
    a = rt.spawn(img, argv=["files", "open:/data/a.txt"], stdout=(out_a := bytearray()),
                 dirs={"/data": str(tree / "data")})
    b = rt.spawn(img, argv=["files", "read:3", "read:4", "close:3"], stdout=(out_b := bytearray()))
    try:
        assert a.run() == 0 and b.run() == 0
    finally:
        a.destroy()
        b.destroy()
    assert out_a.decode() == "3\n"
    assert out_b.decode().splitlines() == [E["EBADF"]] * 3


def _host_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_destroy_closes_every_host_descriptor(rt, image, tree):
    img = rt.load(image)
    before = _host_fds()
    sb = rt.spawn(img, argv=["files", "open:/data/a.txt", "open:/data/sub", "open:/data/a.txt"],
                  stdout=bytearray(), dirs={"/data": str(tree / "data"), "/o": str(tree / "out")})
    assert sb.run() == 0
    assert _host_fds() >= before + 5  # two preopens, three files
    sb.destroy()
    assert _host_fds() == before


def test_bad_dirs_are_refused_at_spawn(rt, image, tree):
    img = rt.load(image)
    before = _host_fds()
    with pytest.raises(TmeboxError, match="nope: No such file"):
        rt.spawn(img, dirs={"/data": str(tree / "data"), "/x": str(tree / "nope")})
    with pytest.raises(TmeboxError, match="absolute"):
        rt.spawn(img, dirs={"data": str(tree / "data")})
    with pytest.raises(TmeboxError, match="'ro' | 'rw'"):
        rt.spawn(img, dirs={"/data": (str(tree / "data"), "rwx")})
    with pytest.raises(TmeboxError, match="Not a directory"):
        rt.spawn(img, dirs={"/data": str(tree / "data" / "a.txt")})
    with pytest.raises(TmeboxError, match="fd_limit"):
        rt.spawn(img, fd_limit=2)
    assert rt.sandboxes == 0 and _host_fds() == before


def test_a_rename_race_never_leads_out(image, tree):
    """The host swaps data/d between a directory and symlinks out while the guest reads
    data/d/key over and over: every read finds the inside file or fails."""
    (tree / "data" / "d").mkdir()
    (tree / "data" / "d" / "key").write_text("inside")
    os.symlink(str(tree / "secret"), tree / "data" / "abs")
    os.symlink("../secret", tree / "data" / "rel")
    stop = threading.Event()

    def swap() -> None:
        d, keep = tree / "data" / "d", tree / "data" / "d.real"
        while not stop.is_set():
            for link in ("abs", "rel"):
                d.rename(keep)
                (tree / "data" / link).rename(d)
                d.rename(tree / "data" / link)
                keep.rename(d)
                # a breath with the inside in place (and the GIL free), so that some reads
                # find it even when the swaps would otherwise win every time
                stop.wait(0.0002)

    t = threading.Thread(target=swap)
    t.start()
    try:
        with tmebox.Runtime(max_sandboxes=1) as rt:
            got = steps(rt, image, {"/data": str(tree / "data")}, *["cat:/data/d/key"] * 400)
    finally:
        stop.set()
        t.join()
    assert "SECRET" not in got
    assert set(got) <= {"inside", E["ENOENT"], E["EACCES"], E["ENOTDIR"]}, set(got)
    assert "inside" in got


def test_memory_limit(rt, image):
    lim = 8 << 20
    assert steps(rt, image, {}, "malloc:0x100000", "malloc:0x1000000", "malloc:0x10000",
                 memory_limit=lim) == ["ok", "NULL", "ok"]
    # 256 KiB blocks are mmapped: 260 KiB each, three fit in 1 MiB
    assert steps(rt, image, {}, *["malloc:0x40000"] * 6, memory_limit=1 << 20) == \
        ["ok"] * 3 + ["NULL"] * 3
    with pytest.raises(ValueError, match="memory_limit"):
        rt.spawn(rt.load(image), memory_limit=-1)


def test_no_limit_by_default_on_native(image):
    with tmebox.Runtime(max_sandboxes=1) as rt:
        assert steps(rt, image, {}, "malloc:0xc0000000") == ["ok"]  # 3 GiB, never touched


def test_the_cli_gives_directories_and_limits(image, tree):
    cmd = [sys.executable, "-m", "tmebox.cli", "run", "--dir", f"{tree / 'data'}:/data",
           str(image), "cat:/data/a.txt", "write:/o/x:y", "malloc:0x1000000",
           "--dir", f"{tree / 'out'}:/o:rw", "--memory-limit", "4M"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["alpha", "ok", "NULL"]
    assert (tree / "out" / "x").read_text() == "y"
    for bad in (["--dir", "nocolon"], ["--dir", f"{tree}:rel"], ["--dir", f"{tree}:/x:rwx"],
                ["--memory-limit", "lots"]):
        r = subprocess.run([sys.executable, "-m", "tmebox.cli", "run", *bad, str(image)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "must be" in r.stderr, r.stderr
