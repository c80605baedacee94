"""An adversarial tenant against files by capability and memory_limit (docs/runtime.md
"Files", "Limits"), on both backends.

Every test asserts the SAFE behaviour: one that fails is a hole. The guest is
c/files_attack.c, a raw-syscall interpreter (its header says how steps are written), so a
test can pass what libc never would: odd flags, bad fds, huge sizes, edge pointers."""

from __future__ import annotations

import errno
import os
import threading
import time
import weakref
from pathlib import Path

import pytest

import tmebox

BACKENDS = ["native", "tme"]

# x86-64 numbers
OPEN, OPENAT, CLOSE, STAT, FSTAT, LSTAT, NEWFSTATAT = 2, 257, 3, 4, 5, 6, 262
READ, WRITE, PREAD, PWRITE, LSEEK, FTRUNCATE, TRUNCATE = 0, 1, 17, 18, 8, 77, 76
ACCESS, FACCESSAT2, MKDIR, MKDIRAT, UNLINK, RMDIR, UNLINKAT = 21, 439, 83, 258, 87, 84, 263
RENAME, RENAMEAT, RENAMEAT2, READLINK, GETDENTS64, GETCWD, CHDIR = 82, 264, 316, 89, 217, 79, 80
DUP, DUP2, DUP3, FCNTL, IOCTL, CREAT, FCHDIR = 32, 33, 292, 72, 16, 85, 81
LINKAT, SYMLINKAT, MKNODAT, OPENAT2, STATX, FCHMOD, FCHOWN, UTIMENSAT, FALLOCATE = \
    265, 266, 259, 437, 332, 91, 93, 280, 285
NAME_TO_HANDLE_AT, OPEN_BY_HANDLE_AT, SENDFILE, COPY_FILE_RANGE, SPLICE = 303, 304, 40, 326, 275
KILL = 62
O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_NONBLOCK = 1, 2, 0x40, 0x80, 0x200, \
    0x400, 0x800
O_DIRECTORY, O_NOFOLLOW, O_PATH, O_TMPFILE = 0x10000, 0x20000, 0x200000, 0x410000
F_DUPFD, F_SETFL, F_GETFL, F_DUPFD_CLOEXEC = 0, 4, 3, 1030
AT_FDCWD, AT_EMPTY_PATH, AT_REMOVEDIR = -100, 0x1000, 0x200


def neg(*names: str) -> set[str]:
    return {str(-getattr(errno, n)) for n in names}


@pytest.fixture(scope="module")
def image(tmp_path_factory, sandbox_libc) -> Path:
    from tmebox.toolchain import cc

    d = tmp_path_factory.mktemp("files_attack")
    (img,) = cc.build([Path(__file__).parent / "c" / "files_attack.c"], d / "attack.box",
                      isolation="code+data")
    return img


@pytest.fixture(scope="module", params=BACKENDS)
def rt(request):  # one per backend: a tme Runtime takes ~2 s to set up
    with tmebox.Runtime(backend=request.param, max_sandboxes=4) as runtime:
        yield runtime


@pytest.fixture
def tree(tmp_path) -> Path:
    """data/ (ro), out/ (rw), secret/ (not given), and host-made traps inside them."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.txt").write_text("alpha")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("SECRET")
    (tmp_path / "out" / "d").mkdir(parents=True)
    (tmp_path / "out" / "f").write_text("0123456789")
    os.symlink(str(tmp_path / "secret"), tmp_path / "out" / "abs")  # absolute, out
    os.symlink("../secret", tmp_path / "out" / "rel")  # relative, out
    os.symlink("../data/a.txt", tmp_path / "out" / "toro")  # into the read-only preopen
    os.symlink("c2", tmp_path / "out" / "c1")  # a chain that ends outside
    os.symlink("rel/key", tmp_path / "out" / "c2")
    os.symlink("loop", tmp_path / "out" / "loop")
    os.symlink(str(tmp_path / "secret" / "new"), tmp_path / "out" / "dangling")
    os.symlink("/proc/self/fd/0", tmp_path / "out" / "magic")
    os.symlink("d", tmp_path / "out" / "ind")  # inside: fine
    return tmp_path


def dirs_of(tree: Path) -> dict:
    return {"/data": str(tree / "data"), "/out": (str(tree / "out"), "rw")}


def _top(rt, img) -> int:
    probe = rt.spawn(img, argv=["attack", "top:0"])
    try:
        return probe._mem.hi
    finally:
        probe.destroy()


_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def load(rt, image):
    """The image loaded once per Runtime (a load holds a host descriptor on native)."""
    if rt not in _LOADED:
        _LOADED[rt] = rt.load(image)
    return _LOADED[rt]


def calls(rt, image, steps, dirs=None, *, keep=False, **spawn):
    """Run the steps in a fresh sandbox: [result of step 0, ...] (strings); with keep, the
    (live, run) sandbox too."""
    img = load(rt, image)
    out = bytearray()
    sb = rt.spawn(img, argv=["attack", f"top:{_top(rt, img):#x}", *steps], stdout=out,
                  dirs=dirs or {}, **spawn)
    try:
        assert sb.run() == 0
        got = [line.split("=", 1)[1] for line in out.decode().splitlines()]
    finally:
        if not keep:
            sb.destroy()
    assert len(got) == len(steps), out.decode()
    return (got, sb) if keep else got


def c(*args) -> str:
    return ",".join(str(a) for a in args)


def host_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def untouched(tree: Path) -> None:
    assert (tree / "data" / "a.txt").read_text() == "alpha"
    assert sorted(p.name for p in (tree / "data").iterdir()) == ["a.txt", "sub"]
    assert sorted(p.name for p in (tree / "secret").iterdir()) == ["key"]
    assert (tree / "secret" / "key").read_text() == "SECRET"


# -- holes found (these fail on the commit under test) ------------------------------------


def test_dup2_onto_itself_leaks_no_host_descriptor(rt, image, tree):
    """dup2(fd, fd) 200 times: no host descriptor may outlive destroy() (nor exceed fd_limit)."""
    load(rt, image)
    before = host_fds()
    got, sb = calls(rt, image, [c(OPEN, "'~data~a.txt", 0), f"rep:200:{c(DUP2, '$0', '$0')}"],
                    dirs_of(tree), keep=True)
    assert got == ["3", "3 ok=200"]
    during = host_fds()
    sb.destroy()
    assert host_fds() == before
    assert during <= before + 64 + 2


def test_memory_limit_bounds_plain_stores_above_the_break(image):
    """memory_limit=1 MiB, then 64 MiB of plain stores above the break (no brk, no mmap)."""
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")

    with tmebox.Runtime(max_sandboxes=2) as rt:
        img = rt.load(image)
        out = bytearray()
        sb = rt.spawn(img, argv=["attack", "top:0", "touch:64"], stdout=out,
                      memory_limit=1 << 20)
        r0 = rss()
        try:
            status = sb.run()
        except tmebox.SandboxError:
            status = None  # stopped by a fault: safe
        grown = rss() - r0
        sb.destroy()
    assert status is None or grown < 16 << 20, f"the guest touched {grown >> 20} MiB"


def test_a_refused_fifo_open_has_no_effect_on_the_host(rt, image, tree):
    """open() of a FIFO is refused (EACCES), but must not first open it: a host writer
    blocked opening the FIFO must stay blocked."""
    fifo = tree / "data" / "fifo"
    os.mkfifo(fifo)
    opened, tid = threading.Event(), []

    def writer() -> None:
        tid.append(threading.get_native_id())
        try:
            fd = os.open(fifo, os.O_WRONLY)
        except OSError:
            return
        opened.set()
        os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    for _ in range(200):  # until the writer sits in openat(2)
        if tid and Path(f"/proc/self/task/{tid[0]}/syscall").read_text().split()[0] == "257":
            break
        time.sleep(0.005)
    got = calls(rt, image, [c(OPEN, "'~data~fifo", 0)], dirs_of(tree))
    woke = opened.wait(0.3)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets a still blocked writer go
    t.join(2)
    os.close(reader)
    assert got == [str(-errno.EACCES)]
    assert not woke, "the refused open opened the FIFO's read end on the host"


def test_an_exit_status_is_a_byte(rt, image):
    """kill(getpid(), 2**63): the status run() reports must be a byte, as on Linux."""
    img = load(rt, image)
    sb = rt.spawn(img, argv=["attack", "top:0", c(KILL, 1, 1 << 63)], stdout=bytearray())
    try:
        status = sb.run()
    except tmebox.SandboxError:
        status = 0
    finally:
        sb.destroy()
    assert 0 <= status <= 255, status


# -- attacks that are stopped ----------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "'~data~..~secret~key", "'~out~..~secret~key", "'~out~d~..~..~secret~key",
    "'~out~abs~key", "'~out~rel~key", "'~out~c1", "'~out~magic", "'~data~..~data~a.txt",
    "'~data~sub~..~..~..~..~secret~key", "'~secret~key", "'~~~data~..~secret~key",
    "'~data~.~..~secret~key"])
def test_no_escape_by_path(rt, image, tree, path):
    """'..', absolute/relative/chained symlinks, magic links and paths beyond every preopen."""
    got = calls(rt, image, [c(OPEN, path, 0), c(OPENAT, AT_FDCWD, path, 0),
                            c(STAT, path, "@144"), c(ACCESS, path, 4)], dirs_of(tree))
    assert set(got) <= neg("EACCES", "ENOENT", "ELOOP", "EXDEV"), got


def test_symlink_loop_and_inside_symlinks(rt, image, tree):
    """A symlink loop is ELOOP; a symlink that stays inside works."""
    got = calls(rt, image, [c(OPEN, "'~out~loop", 0), c(OPEN, "'~out~ind", O_DIRECTORY)],
                dirs_of(tree))
    assert got[0] == str(-errno.ELOOP) and int(got[1]) >= 3


def test_no_escape_through_a_dirfd(rt, image, tree):
    """openat/mkdirat/unlinkat/renameat/fstatat on a dirfd beneath a preopen, with '..'."""
    got = calls(rt, image, [
        c(OPEN, "'~out~d", O_DIRECTORY),  # 0
        c(OPENAT, "$0", "'..~..~secret~key", 0),
        c(OPENAT, "$0", "'..", O_DIRECTORY),
        c(MKDIRAT, "$0", "'..~..~secret~x", 0o777),
        c(UNLINKAT, "$0", "'..~..~secret~key", 0),
        c(RENAMEAT, AT_FDCWD, "'~out~f", "$0", "'..~..~secret~f"),
        c(NEWFSTATAT, "$0", "'..~..~secret~key", "@144", 0),
        c(OPENAT, "$0", "'~secret~key", 0),  # absolute: dirfd ignored, nothing there
        c(OPENAT, 0, "'x", 0),  # a stream as dirfd
        c(OPENAT, -1, "'x", 0), c(OPENAT, 0x7fffffff, "'x", 0),
    ], dirs_of(tree))
    assert int(got[0]) >= 3
    assert set(got[1:]) <= neg("EACCES", "ENOENT", "ENOTDIR", "EBADF", "EXDEV"), got
    untouched(tree)
    assert (tree / "out" / "f").exists()


def test_creating_through_symlinks_out_creates_nothing(rt, image, tree):
    """O_CREAT through a dangling symlink out, mkdir/rename beneath a symlinked directory."""
    got = calls(rt, image, [
        c(OPEN, "'~out~dangling", O_CREAT | O_WRONLY, 0o644),
        c(OPEN, "'~out~abs~new", O_CREAT | O_WRONLY, 0o644),
        c(OPEN, "'~out~rel~new", O_CREAT | O_WRONLY, 0o644),
        c(MKDIR, "'~out~abs~dir", 0o777),
        c(RENAME, "'~out~f", "'~out~rel~f"),
        c(OPEN, "'~out~toro", O_WRONLY | O_TRUNC),  # a symlink into the ro preopen
        c(UNLINK, "'~out~abs~key"),
    ], dirs_of(tree))
    assert set(got) <= neg("EACCES", "EXDEV"), got
    untouched(tree)


def test_read_only_refuses_every_way_of_writing(rt, image, tree):
    """O_TRUNC|O_RDONLY, O_CREAT, creat, ftruncate/write/pwrite on an O_RDONLY fd, F_SETFL,
    mkdir by openat O_CREAT|O_DIRECTORY, mkdirat/unlinkat on a ro dirfd, dup'd ro dirfd."""
    got = calls(rt, image, [
        c(OPEN, "'~data~a.txt", 0),  # 0
        c(OPEN, "'~data", O_DIRECTORY),  # 1
        c(OPEN, "'~data~a.txt", O_TRUNC),
        c(OPEN, "'~data~a.txt", O_APPEND),
        c(OPEN, "'~data~new", O_CREAT | O_EXCL, 0o644),
        c(OPEN, "'~data~newdir", O_CREAT | O_DIRECTORY, 0o755),
        c(CREAT, "'~data~new", 0o644),
        c(FTRUNCATE, "$0", 0),
        c(WRITE, "$0", "'x", 1),
        c(PWRITE, "$0", "'x", 1, 0),
        c(FCNTL, "$0", F_SETFL, O_RDWR | O_APPEND),  # 10: accepted, but grants nothing
        c(WRITE, "$0", "'x", 1),
        c(MKDIRAT, "$1", "'x", 0o755),
        c(UNLINKAT, "$1", "'a.txt", 0),
        c(OPENAT, "$1", "'a.txt", O_RDWR),
        c(DUP, "$1"),  # 15
        c(UNLINKAT, "$15", "'a.txt", 0),
        c(RENAMEAT, "$15", "'a.txt", AT_FDCWD, "'~out~a.txt"),
        c(RENAMEAT, AT_FDCWD, "'~out~f", "$15", "'f"),
        c(FACCESSAT2, "$1", "'a.txt", 2, 0),
        c(UNLINKAT, AT_FDCWD, "'~data~sub", AT_REMOVEDIR),  # 20
        c(TRUNCATE, "'~data~a.txt", 0),
        c(FCHMOD, "$0", 0o777), c(FCHOWN, "$0", 0, 0), c(FALLOCATE, "$0", 0, 0, 4096),
        c(UTIMENSAT, "$1", "'a.txt", 0, 0),
    ], dirs_of(tree))
    assert int(got[0]) >= 3 and int(got[1]) >= 3 and int(got[15]) >= 3
    refused = [g for i, g in enumerate(got) if i not in (0, 1, 10, 15)]
    assert set(refused) <= neg("EROFS", "EBADF", "EINVAL", "ENOSYS"), got
    untouched(tree)


def test_unoffered_calls_are_enosys(rt, image, tree):
    """link, symlink, mknod, openat2, statx, file handles, sendfile, splice, fchdir."""
    got = calls(rt, image, [
        c(LINKAT, AT_FDCWD, "'~data~a.txt", AT_FDCWD, "'~out~hard", 0),
        c(SYMLINKAT, "'~secret", AT_FDCWD, "'~out~sym"),
        c(MKNODAT, AT_FDCWD, "'~out~fifo", 0o10644, 0),
        c(OPENAT2, AT_FDCWD, "'~data~a.txt", "@24", 24),
        c(STATX, AT_FDCWD, "'~data~a.txt", 0, 0xfff, "@256"),
        c(NAME_TO_HANDLE_AT, AT_FDCWD, "'~data~a.txt", "@128", "@8", 0),
        c(OPEN_BY_HANDLE_AT, 3, "@128", 0),
        c(SENDFILE, 1, 3, 0, 100), c(COPY_FILE_RANGE, 3, 0, 1, 0, 100, 0),
        c(SPLICE, 3, 0, 1, 0, 100, 0), c(FCHDIR, 3),
    ], dirs_of(tree))
    assert got == [str(-errno.ENOSYS)] * len(got)
    assert sorted(p.name for p in (tree / "out").iterdir()) == sorted(
        ["d", "f", "abs", "rel", "toro", "c1", "c2", "loop", "dangling", "magic", "ind"])


def test_odd_open_flags(rt, image, tree):
    """O_PATH, O_TMPFILE, O_ACCMODE=3, unknown bits, O_NOFOLLOW, O_DIRECTORY|O_CREAT."""
    got = calls(rt, image, [
        c(OPEN, "'~out", O_PATH), c(OPEN, "'~out", O_TMPFILE | O_RDWR, 0o600),
        c(OPEN, "'~out~f", 3), c(OPEN, "'~out~f", 0x80000000), c(OPEN, "'~out~f", 0x4000000),
        c(OPEN, "'~out~ind", O_NOFOLLOW), c(OPEN, "'~out~d", O_WRONLY),
        c(OPENAT, AT_FDCWD, "'~out~x", O_CREAT | O_DIRECTORY | O_RDWR, 0o7777),
    ], dirs_of(tree))
    assert set(got[:6]) <= neg("EINVAL", "ELOOP"), got
    assert got[6] == str(-errno.EISDIR)
    assert int(got[7]) < 0 or not (tree / "out" / "x").is_dir()
    if (tree / "out" / "x").exists():
        assert (tree / "out" / "x").stat().st_mode & 0o7000 == 0  # no setuid/sticky


def test_bad_pointers_and_huge_sizes_give_errno(rt, image, tree):
    """Unterminated paths at the window's edge, NULL and wild pointers, 2**63 sizes."""
    got = calls(rt, image, [
        c(OPEN, "'~out~f", O_RDWR),  # 0
        c(OPEN, "^16", 0), c(OPEN, "^4096", 0), c(OPEN, 0, 0), c(OPEN, -1, 0),
        c(STAT, "'~out~f", "^16"), c(FSTAT, "$0", "^143"), c(FSTAT, "$0", 0),
        c(READ, "$0", "^3", 100), c(READ, "$0", 0, 10), c(READ, "$0", "@8", -1),
        c(PREAD, "$0", "@8", 8, -1), c(PWRITE, "$0", "^4", 4096, 0), c(PWRITE, "$0", 0, 1, 0),
        c(READLINK, "'~out~abs", "^1", 100), c(READLINK, "'~out~abs", "@8", -1),
        c(GETDENTS64, "$0", "@4096", 4096), c(GETDENTS64, 0, "@4096", 4096),
        c(GETCWD, "^1", 100), c(GETCWD, 0, -1),
        c(LSEEK, "$0", 0, 99), c(LSEEK, "$0", -1, 0), c(FTRUNCATE, "$0", -1),
        c(RENAMEAT2, AT_FDCWD, "'~out~f", AT_FDCWD, "'~out~g", 2),  # RENAME_EXCHANGE
        c(RENAMEAT2, AT_FDCWD, "'~out~f", AT_FDCWD, "'~out~g", 1 << 40),
        c(NEWFSTATAT, AT_FDCWD, "'", "@144", AT_EMPTY_PATH),
        c(NEWFSTATAT, AT_FDCWD, "'~out~f", "@144", 0xffff0000),
        c(FCNTL, "$0", 0x7fffffff, 0), c(FCNTL, "$0", F_DUPFD, -1), c(FCNTL, "$0", F_GETFL, 0),
        c(IOCTL, "$0", 0x541B, "@8"),  # FIONREAD
        c(FSTAT, "$0", "^144"),
    ], dirs_of(tree))
    assert int(got[0]) >= 3
    assert all(int(g) < 0 for g in got[1:-3]), got
    assert int(got[-3]) >= 0 and got[-2] == str(-errno.ENOTTY) and got[-1] == "0"
    assert (tree / "out" / "f").read_text() == "0123456789"


def test_fifos_devices_and_sockets_do_not_open(rt, image, tree):
    """A FIFO (every access mode, O_NONBLOCK or not) and a socket in a preopen."""
    import socket

    os.mkfifo(tree / "out" / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tree / "out" / "sock"))
    try:
        t0 = time.monotonic()
        got = calls(rt, image, [c(OPEN, "'~out~fifo", m) for m in
                                (0, O_WRONLY, O_RDWR, O_NONBLOCK, O_WRONLY | O_NONBLOCK)]
                    + [c(OPEN, "'~out~sock", 0), c(OPEN, "'~out~sock", O_RDWR)],
                    {"/out": (str(tree / "out"), "rw")}, timeout=10)
        assert time.monotonic() - t0 < 8
    finally:
        s.close()
    assert set(got) <= neg("EACCES", "ENXIO"), got


def test_device_nodes_do_not_open(rt, image):
    """/dev given read-only: /dev/zero, /dev/null, /dev/tty are refused."""
    got = calls(rt, image, [c(OPEN, "'~dev~zero", 0), c(OPEN, "'~dev~null", 0),
                            c(OPEN, "'~dev~tty", 0), c(OPEN, "'~dev~stdin", 0)],
                {"/dev": "/dev"})
    assert set(got) <= neg("EACCES", "ENXIO", "ENOENT"), got


def test_descriptors_stay_within_fd_limit(rt, image, tree):
    """dup, F_DUPFD, F_DUPFD_CLOEXEC, dup3 and open loops past fd_limit: EMFILE, and the host
    holds no more than fd_limit descriptors for the sandbox; all gone after destroy."""
    load(rt, image)
    before = host_fds()
    got, sb = calls(rt, image, [
        c(OPEN, "'~data~a.txt", 0),  # 0
        f"rep:100:{c(DUP, '$0')}", f"rep:100:{c(FCNTL, '$0', F_DUPFD, 0)}",
        f"rep:100:{c(FCNTL, '$0', F_DUPFD_CLOEXEC, 5)}", "rep:100:" + c(OPEN, "'~data", 0),
        f"rep:100:{c(DUP3, '$0', 15, 0)}", f"rep:100:{c(DUP2, '$0', 7)}",
        c(DUP2, "$0", 16), c(DUP2, "$0", 10**6), c(DUP2, 1, 15), c(DUP3, 1, 1, 0),
    ], dirs_of(tree), keep=True, fd_limit=16)
    during = host_fds()
    sb.destroy()
    assert got[1].startswith(f"{-errno.EMFILE} ok=12")  # 16 - 3 streams - fd 3
    assert got[2].startswith(f"{-errno.EMFILE} ok=0")
    assert got[7:10] == [str(-errno.EBADF), str(-errno.EBADF), "15"]
    assert got[10] == str(-errno.EINVAL)
    assert during <= before + 16 + 2
    assert host_fds() == before


def test_close_all_descriptors_then_reuse_numbers(rt, image, tree):
    """Close the streams, then open files at 0-2, and fd numbers with high bits set."""
    got = calls(rt, image, [
        c(CLOSE, 0), c(OPEN, "'~data~a.txt", 0), c(CLOSE, (1 << 32) | 0),
        c(CLOSE, -1), c(CLOSE, 1 << 31), c(READ, (1 << 32) | 5, "@4", 4)],
        dirs_of(tree))
    assert got[:2] == ["0", "0"] and got[2] == "0"
    assert set(got[3:]) <= neg("EBADF"), got


def test_rename_games_stay_inside(rt, image, tree):
    """Rename a preopen itself, '..' and '.', a dir into its child, a dir holding an open dirfd;
    the dirfd keeps working only inside."""
    got = calls(rt, image, [
        c(RENAME, "'~out", "'~out~x"), c(RENAME, "'~out~.", "'~out~x"),
        c(RENAME, "'~out~d~..", "'~out~x"), c(RENAME, "'~out~d", "'~out~d~sub"),
        c(RENAME, "'~out~d", "'~out~.."), c(UNLINKAT, AT_FDCWD, "'~out", AT_REMOVEDIR),
        c(UNLINKAT, AT_FDCWD, "'~out~d~..", AT_REMOVEDIR),
        c(OPEN, "'~out~d", O_DIRECTORY),  # 7
        c(RENAME, "'~out~d", "'~out~e"),
        c(OPENAT, "$7", "'..~..~secret~key", 0),
        c(OPENAT, "$7", "'new", O_CREAT | O_WRONLY, 0o644),
        c(RENAME, "'~out~abs", "'~out~moved"), c(OPEN, "'~out~moved~key", 0),
        c(RENAME, "'~out~e", "'~data~e"),
    ], dirs_of(tree))
    assert set(got[:7]) <= neg("EBUSY", "EINVAL", "ENOENT"), got
    assert int(got[7]) >= 3 and got[8] == "0"
    assert got[9] == str(-errno.EACCES) and int(got[10]) >= 3
    assert got[11] == "0" and got[12] == str(-errno.EACCES) and got[13] == str(-errno.EROFS)
    assert (tree / "out" / "e" / "new").exists()
    untouched(tree)


def test_chdir_cannot_leave(rt, image, tree):
    """chdir('..') from a preopen, to a symlink out, to a file; relative paths after it."""
    got = calls(rt, image, [
        c(CHDIR, "'~out"), c(CHDIR, "'.."), c(CHDIR, "'~out~abs"), c(CHDIR, "'~out~f"),
        c(CHDIR, "'~"), c(OPEN, "'..~secret~key", 0), c(OPEN, "'abs~key", 0),
        c(CHDIR, "'d"), c(OPEN, "'..~..~secret~key", 0), c(GETCWD, "@64", 64), "show:9:7",
    ], dirs_of(tree))
    assert got[0] == "0"
    assert set(got[1:7]) <= neg("EACCES", "ENOENT", "ENOTDIR"), got
    assert got[7] == "0" and got[8] in neg("EACCES", "ENOENT") and got[10] == "/out/d."


def test_getdents_and_reads_on_the_wrong_kind(rt, image, tree):
    """getdents64 on a file and a stream, read on a directory, lseek on a stream."""
    got = calls(rt, image, [
        c(OPEN, "'~out~f", 0), c(OPEN, "'~out", O_DIRECTORY),
        c(GETDENTS64, "$0", "@4096", 4096), c(GETDENTS64, 1, "@4096", 4096),
        c(READ, "$1", "@16", 16), c(LSEEK, 0, 0, 0), c(PREAD, 1, "@4", 4, 0),
    ], dirs_of(tree))
    assert got[2:] == [str(-errno.ENOTDIR)] * 2 + [str(-errno.EISDIR)] + [str(-errno.ESPIPE)] * 2


def test_another_sandboxs_descriptors_are_unreachable(rt, image, tree):
    """Sandbox A holds /out/f open; B (no dirs) tries every fd number and every path."""
    img = load(rt, image)
    a = rt.spawn(img, argv=["attack", "top:0", c(OPEN, "'~out~f", O_RDWR)], stdout=bytearray(),
                 dirs=dirs_of(tree))
    try:
        assert a.run() == 0
        got = calls(rt, image, [c(READ, fd, "@8", 8) for fd in range(3, 12)]
                    + [c(OPEN, "'~out~f", 0)])
    finally:
        a.destroy()
    assert set(got) <= neg("EBADF", "ENOENT"), got


def test_nothing_outlives_destroy_after_many_file_calls(rt, image, tree):
    """Every kind of call that makes host descriptors, then destroy: the host's count is back."""
    load(rt, image)
    before = host_fds()
    calls(rt, image, [
        c(OPEN, "'~out~d", O_DIRECTORY), c(OPENAT, "$0", "'x", O_CREAT | O_RDWR, 0o600),
        c(DUP, "$1"), c(FCNTL, "$1", F_DUPFD, 20), c(DUP3, "$1", 30, 0x80000),
        c(DUP2, "$0", 40), c(MKDIRAT, "$0", "'y", 0o700), c(RENAMEAT, "$0", "'y", "$0", "'z"),
        c(NEWFSTATAT, "$0", "'z", "@144", 0x100), c(CHDIR, "'~out~d~z"),
        c(OPEN, "'~out~f", O_RDWR), c(CLOSE, 3),
    ], dirs_of(tree))
    assert host_fds() == before


def test_memory_limit_brk_and_mmap_games(rt, image):
    """MAP_FIXED over maps, brk past the limit, mmap/munmap churn: never beyond memory_limit."""
    lim = 1 << 20
    MAP = 0x22  # MAP_PRIVATE | MAP_ANONYMOUS
    got = calls(rt, image, [
        c(9, 0, 0x80000, 3, MAP, -1, 0),  # 0: half the limit
        c(9, "$0", 0x80000, 3, MAP | 0x10, -1, 0),  # 1: MAP_FIXED over itself: no charge
        c(9, "$0", 0x100000, 3, MAP | 0x10, -1, 0),  # 2: over it and beyond: too much
        c(9, 0, 0x80000, 3, MAP, -1, 0),  # 3: the other half
        c(9, 0, 0x1000, 3, MAP, -1, 0),  # 4: one page more
        c(12, 0),  # 5: the break
        c(12, "$5+0x100000"),  # 6: a break past the limit stays
        f"rep:300:{c(11, '$3', 0x80000)}",  # 7: munmap churn
        c(9, 0, 0x80000, 3, MAP, -1, 0),  # 8: back
        c(9, 0, 0x80000, 3, MAP, -1, 0),  # 9: over
        c(11, "$8", 0x80000), c(12, "$5"),
        c(9, 0, 1 << 32, 3, MAP, -1, 0), c(9, 0, -1, 3, MAP, -1, 0),
        c(9, 0, 0x1000, 7, MAP, -1, 0), c(9, 0, 0x1000, 3, 0x21, -1, 0),  # EXEC, SHARED
        c(9, 0, 0x1000, 3, 0x02, 3, 0),  # a file mapping
    ], memory_limit=lim)
    assert int(got[0]) > 0 and got[1] == got[0]
    assert got[2] == str(-errno.ENOMEM) and int(got[3]) > 0 and got[4] == str(-errno.ENOMEM)
    assert got[6] == got[5]
    assert got[8] != str(-errno.ENOMEM) and got[9] == str(-errno.ENOMEM)
    assert all(int(g) < 0 for g in got[12:]), got
