"""Files by capability: a sandbox's descriptor table and the directories it was given.

A sandbox reaches no file of the host's but through the directories the host preopened
for it (`spawn(dirs=...)`, `tmebox run --dir`). Where a guest path goes is decided in
the kernel: the longest preopened guest path that is a prefix of it (whole components)
names the directory, and the rest is resolved by openat2(RESOLVE_BENEATH), so `..`,
absolute symlinks and symlinks that lead out fail there, whatever the string looked
like. Calls that act on a name instead of opening it (mkdir, unlink, rename, readlink,
lstat) resolve the parent the same way and then act on one plain component through its
descriptor. A read-only preopen refuses every change (EROFS) before the kernel is asked.
Only regular files and directories open, and open(2) itself only ever runs on one (found
first as an O_PATH descriptor): a FIFO or device in a preopen could block the host's thread
or act on being opened.

Descriptors are per sandbox (fds 0-2 are its streams), at most `fd_limit` of them, and
every host descriptor behind them is closed on destroy().
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable, Mapping
from functools import cache

from tmebox.errors import TmeboxError
from tmebox.runtime.memory import SandboxMemory
from tmebox.runtime.streams import Sink, Source
from tmebox.trusted.record import Record, field

TYPE_CHECKING = False  # (not typing's: `tmebox run` does without typing)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_FD_LIMIT", "HANDLERS", "DirSpec", "FileTable", "OpenFile", "direct_marks",
           "parse_dirs", "read_path"]

DEFAULT_FD_LIMIT = 64
PATH_MAX = 4096
IO_CHUNK = 1 << 20  # at most this much per call, as for the streams
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_EMPTY_PATH = 0x100, 0x200, 0x1000
O_ACCMODE, O_RDONLY, O_WRONLY, O_RDWR = 3, 0, 1, 2
O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC, O_APPEND, O_NONBLOCK = 0o100, 0o200, 0o400, 0o1000, 0o2000, \
    0o4000
O_DSYNC, O_LARGEFILE, O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC, O_SYNC = 0o10000, 0o100000, \
    0o200000, 0o400000, 0o2000000, 0o4010000
O_PATH = 0o10000000
# What a guest may ask of open (O_TMPFILE, O_PATH, O_DIRECT, O_NOATIME, O_ASYNC: EINVAL).
_OPEN_FLAGS = (O_ACCMODE | O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_APPEND | O_NONBLOCK
               | O_DSYNC | O_LARGEFILE | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_SYNC)
RESOLVE_NO_MAGICLINKS, RESOLVE_BENEATH = 0x02, 0x08
SYS_OPENAT2, SYS_GETDENTS64, SYS_FACCESSAT2 = 437, 217, 439
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL = 0, 1, 2, 3, 4
F_GETLK, F_SETLK, F_SETLKW, F_DUPFD_CLOEXEC, F_UNLCK = 5, 6, 7, 1030, 2
FD_CLOEXEC = 1
TIOCGWINSZ = 0x5413
# struct stat of x86-64 Linux (144 bytes)
_STAT = struct.Struct("<QQQIIIiQqqqqqqqqq24x")


class DirSpec(Record, frozen=True):
    """One directory given to a sandbox: guest path, host path, writable."""

    guest: str
    host: str
    writable: bool


def parse_dirs(dirs: Mapping[str, Any]) -> list[DirSpec]:
    """spawn(dirs=...): {"/guest": "/host/dir"} (read-only) or {"/guest": ("/host", "rw")}."""
    out = []
    for guest, value in dirs.items():
        host, mode = (value, "ro") if not isinstance(value, tuple) else (value + ("ro",))[:2]
        if not isinstance(guest, str) or not guest.startswith("/") or "\0" in guest:
            raise TmeboxError(f"dirs: guest path {guest!r} must be an absolute path")
        if mode not in ("ro", "rw") or (isinstance(value, tuple) and len(value) != 2):
            raise TmeboxError(f"dirs[{guest!r}]: {value!r}: give a host path, or (host path, "
                              "'ro' | 'rw')")
        out.append(DirSpec(guest, os.fspath(host), mode == "rw"))
    return out


class OpenFile(Record):
    """A guest descriptor for a host file or directory opened beneath a preopen."""

    fd: int  # the host's descriptor
    writable: bool  # a directory: the guest may change what is beneath it
    is_dir: bool
    cloexec: bool = False


class _Preopen(Record, frozen=True):
    parts: tuple[bytes, ...]  # the guest path's components
    fd: int  # O_PATH | O_DIRECTORY on the host directory
    writable: bool
    host: bytes  # the directory's path on the host, symlinks resolved (for getcwd)


Entry = Source | Sink | OpenFile


class FileTable(Record):
    """One sandbox's descriptors and preopened directories."""

    entries: dict[int, Entry]
    preopens: list[_Preopen] = field(default_factory=list)
    limit: int = DEFAULT_FD_LIMIT
    cwd: tuple[bytes, ...] = ()
    opened_from: tuple[tuple[Source, Sink, Sink], list[DirSpec], str] | None = None
    # Told of every change of an fd (its new entry, None once closed): the native backend
    # services some calls on plain host descriptors itself (tmebox_calls.c).
    watch: Callable[[int, Entry | None], None] | None = None

    def watch_with(self, watch: Callable[[int, Entry | None], None]) -> None:
        self.watch = watch
        for fd, entry in self.entries.items():
            watch(fd, entry)

    def put(self, fd: int, entry: Entry) -> None:
        self.entries[fd] = entry
        if self.watch is not None:
            self.watch(fd, entry)

    @classmethod
    def open(cls, stdin: Source, stdout: Sink, stderr: Sink, dirs: list[DirSpec] = [],  # noqa: B006
             limit: int = DEFAULT_FD_LIMIT, cwd: str = "/") -> FileTable:
        """The table a sandbox starts with; a host directory that cannot be opened raises
        TmeboxError naming it (and nothing stays open). cwd, the guest's working directory,
        must be "/" or lie beneath one of dirs' guest paths."""
        if not 3 <= limit <= 1 << 16:
            raise TmeboxError(f"fd_limit must be between 3 and 65536, not {limit}")
        parts = _components(cwd.encode()) if isinstance(cwd, str) else ()
        guests = [_components(d.guest.encode()) for d in dirs]
        beneath = not parts or any(parts[:len(g)] == g for g in guests)
        if not isinstance(cwd, str) or not cwd.startswith("/") or b".." in parts \
                or not beneath:
            raise TmeboxError(f"cwd {cwd!r}: must be an absolute guest path beneath one of "
                              "dirs, without '..'")
        table = cls({0: stdin, 1: stdout, 2: stderr}, limit=limit, cwd=parts,
                    opened_from=((stdin, stdout, stderr), dirs, cwd))
        try:
            for d in dirs:
                try:
                    fd = os.open(d.host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as e:
                    raise TmeboxError(f"dirs[{d.guest!r}]: {d.host}: {e.strerror}") from None
                table.preopens.append(_Preopen(_components(d.guest.encode()), fd, d.writable,
                                               _host_path(fd)))
        except BaseException:
            table.close_all()
            raise
        return table

    def reopen(self) -> FileTable:
        """The table this one started as: the same streams, the preopens opened anew."""
        assert self.opened_from is not None
        (stdin, stdout, stderr), dirs, cwd = self.opened_from
        return FileTable.open(stdin, stdout, stderr, dirs, self.limit, cwd)

    def close_all(self) -> None:
        for fd, entry in self.entries.items():
            if self.watch is not None:
                self.watch(fd, None)
            if isinstance(entry, OpenFile):
                os.close(entry.fd)
        for p in self.preopens:
            os.close(p.fd)
        self.entries, self.preopens = {}, []

    def get(self, fd: int) -> Entry | None:
        return self.entries.get(fd)

    def file(self, fd: int) -> OpenFile | int:
        """The open file at guest fd, or -errno (a stream: ESPIPE, none: EBADF)."""
        entry = self.entries.get(fd)
        if entry is None:
            return -errno.EBADF
        return entry if isinstance(entry, OpenFile) else -errno.ESPIPE

    def add(self, entry: Entry, lowest: int = 0) -> int:
        """The lowest free fd >= lowest now holding entry, or -EMFILE (entry's host fd is
        then closed)."""
        for fd in range(max(lowest, 0), self.limit):
            if fd not in self.entries:
                self.put(fd, entry)
                return fd
        _close_entry(entry)
        return -errno.EMFILE if lowest < self.limit else -errno.EINVAL

    def close(self, fd: int) -> int:
        entry = self.entries.pop(fd, None)
        if entry is None:
            return -errno.EBADF
        if self.watch is not None:
            self.watch(fd, None)
        _close_entry(entry)
        return 0

    def full(self) -> bool:
        return len(self.entries) >= self.limit

    def locate(self, dirfd: int, path: bytes) -> tuple[int, bytes, bool] | int:
        """(host directory fd, path beneath it, writable) for a guest (dirfd, path), or
        -errno. Only the choice of directory is made here; the kernel resolves the rest."""
        if not path:
            return -errno.ENOENT
        if path.startswith(b"/") or dirfd == AT_FDCWD:
            found = self.preopen_for(path)
            if found is None:
                return -errno.ENOENT  # nothing was given there: for the guest, nothing exists
            best, rest = found
            return best.fd, rest, best.writable
        entry = self.entries.get(dirfd)
        if entry is None:
            return -errno.EBADF
        if not isinstance(entry, OpenFile) or not entry.is_dir:
            return -errno.ENOTDIR
        return entry.fd, path, entry.writable

    def preopen_for(self, path: bytes) -> tuple[_Preopen, bytes] | None:
        """The preopen a guest path (relative: to the working directory) is beneath, by
        its longest guest path, and the rest of the path ("." for itself)."""
        parts = (() if path.startswith(b"/") else self.cwd) + _components(path)
        # Of the preopens the path is beneath, the deepest whose directory its ".."s do not
        # climb out of ("/" and "/a/b" preopened: "/a/b/../c" is "/"'s). Whichever is
        # picked, the kernel keeps the path beneath it.
        for pre in sorted(self.preopens, key=lambda p: -len(p.parts)):
            rest = parts[len(pre.parts):]
            if parts[:len(pre.parts)] == pre.parts and _stays_beneath(rest):
                return pre, b"/".join(rest) or b"."
        return None


def _host_path(fd: int) -> bytes:
    return os.readlink(f"/proc/self/fd/{fd}".encode())


def direct_marks(entry: Entry | None) -> tuple[int, bool, bool, bool, bool]:
    """(host fd, readable, writable, seekable, whole writes) of an entry whose calls may
    go straight to the host descriptor, or host -1: an open file, or a stream that is the
    host's own fd 1 or 2, or its fd 0 while that is a regular file (`prog < input`: reads
    of it never wait). Other fd 0s wait through the Waker, in Python. A stream's fstat and
    lseek stay Python's (not seekable here): the guest sees a pipe whatever the host has."""
    if isinstance(entry, OpenFile):
        return entry.fd, True, True, True, False
    if isinstance(entry, Sink) and entry.target is None:
        return entry.host_fd, False, True, False, True
    if isinstance(entry, Source) and entry.source is None and _regular_file(0):
        return 0, True, False, False, False
    return -1, False, False, False, False


def _regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _stays_beneath(parts: tuple[bytes, ...]) -> bool:
    depth = 0
    for p in parts:
        depth += -1 if p == b".." else 1
        if depth < 0:
            return False
    return True


def _components(path: bytes) -> tuple[bytes, ...]:
    # "" and "." name the directory they are in: dropping them changes nothing; ".." is
    # kept for the kernel to judge.
    return tuple(p for p in path.split(b"/") if p not in (b"", b"."))


def _close_entry(entry: Entry) -> None:
    if isinstance(entry, OpenFile):
        os.close(entry.fd)


@cache
def _libc() -> Any:
    import ctypes  # only once a sandbox uses a file

    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    return lib


def _raw_syscall(*args: Any) -> int:
    """syscall(2) for what the os module lacks; raises OSError."""
    import ctypes

    r = _libc().syscall(*args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def _openat2(dirfd: int, path: bytes, flags: int, mode: int = 0) -> int:
    """openat2(dirfd, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS): a host fd."""
    import ctypes

    if not flags & O_PATH:  # (which takes no other flags)
        flags |= O_NOCTTY
    how = (ctypes.c_uint64 * 3)(flags | os.O_CLOEXEC, mode,
                                RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    for _ in range(16):
        try:
            return _raw_syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_long(dirfd),
                                ctypes.c_char_p(path), how, ctypes.c_size_t(24))
        except OSError as e:
            if e.errno != errno.EAGAIN:  # EAGAIN: a rename raced the lookup; try again
                raise
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def _err(e: OSError) -> int:
    # EXDEV: the path left the directory; for a program that is "not allowed".
    return -errno.EACCES if e.errno == errno.EXDEV else -(e.errno or errno.EIO)


def read_path(mem: SandboxMemory, addr: int) -> bytes | int:
    """The NUL-terminated path at a sandbox pointer, or -EFAULT / -ENAMETOOLONG."""
    out = b""
    while len(out) < PATH_MAX:
        n = min(PATH_MAX - len(out), 4096 - (addr + len(out)) % 4096)
        if not mem.ok(addr + len(out), n, False):
            return -errno.EFAULT
        chunk = mem.read(addr + len(out), n)
        end = chunk.find(0)
        if end >= 0:
            return out + chunk[:end]
        out += chunk
    return -errno.ENAMETOOLONG


Args = tuple[int, int, int, int, int, int]
Handler = Callable[[Args, SandboxMemory, FileTable], int]


def _int(value: int) -> int:
    # A C int argument in a 64-bit register (a dirfd: AT_FDCWD is -100): low 32 bits, signed.
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >> 31 else value


def _at(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int,
        ) -> tuple[int, bytes, bool] | int:
    path = read_path(mem, addr)
    return path if isinstance(path, int) else files.locate(_int(dirfd), path)


def _parent(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int,
            ) -> tuple[int, bytes, bool] | int:
    """(host fd of the parent directory, the last component, writable) for the calls that
    act on a name; the caller closes the fd. -errno if the parent cannot be reached."""
    loc = _at(files, mem, dirfd, addr)
    if isinstance(loc, int):
        return loc
    base, rel, writable = loc
    parts = _components(rel)
    if not parts:
        return -errno.EBUSY  # the preopened (or given) directory itself
    if parts[-1] == b"..":
        return -errno.EINVAL
    try:
        pfd = _openat2(base, b"/".join(parts[:-1]) or b".", O_PATH | O_DIRECTORY)
    except OSError as e:
        return _err(e)
    return pfd, parts[-1], writable


def _on_name(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int, change: bool,
             act: Callable[[bytes, int], int]) -> int:
    """act(name, parent fd) on the last component of a guest path."""
    found = _parent(files, mem, dirfd, addr)
    if isinstance(found, int):
        return found
    pfd, name, writable = found
    try:
        if change and not writable:
            return -errno.EROFS
        return act(name, pfd)
    except OSError as e:
        return _err(e)
    finally:
        os.close(pfd)


def _open(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int, flags: int,
          mode: int) -> int:
    flags &= 0xFFFF_FFFF
    if flags & ~_OPEN_FLAGS or flags & O_ACCMODE == O_ACCMODE:
        return -errno.EINVAL
    loc = _at(files, mem, dirfd, addr)
    if isinstance(loc, int):
        return loc
    base, rel, writable = loc
    if not writable and (flags & O_ACCMODE != O_RDONLY or flags & (O_CREAT | O_TRUNC | O_APPEND)):
        return -errno.EROFS
    if files.full():
        return -errno.EMFILE
    fd = _open_file(base, rel, flags, mode)
    if fd < 0:
        return fd
    return files.add(OpenFile(fd, writable, stat.S_ISDIR(os.fstat(fd).st_mode),
                              bool(flags & O_CLOEXEC)))


def _open_file(base: int, rel: bytes, flags: int, mode: int) -> int:
    """A host fd for rel beneath base opened with the guest's flags, or -errno.

    The file is found first as an O_PATH descriptor (which opens nothing) and only a
    regular file or directory is then opened, through that descriptor: open(2) never
    runs on a FIFO or device, whose opening may block or act. A file O_CREAT makes is
    created exclusively, so it is the regular file made here.
    """
    find = O_PATH | (flags & (O_NOFOLLOW | O_DIRECTORY))
    for _ in range(4):  # a file created or removed meanwhile: look again
        try:
            found = _openat2(base, rel, find)
        except OSError as e:
            if e.errno != errno.ENOENT or not flags & O_CREAT:
                return _err(e)
            try:
                return _openat2(base, rel, (flags | O_EXCL) & ~(O_CLOEXEC | O_LARGEFILE),
                                mode & 0o777)
            except FileExistsError:
                continue  # made meanwhile, or a dangling symlink: look again
            except OSError as e:
                return _err(e)
        try:
            if flags & O_CREAT and flags & O_EXCL:
                return -errno.EEXIST
            kind = os.fstat(found).st_mode
            if stat.S_ISLNK(kind):  # O_NOFOLLOW found the symlink itself
                return -errno.ELOOP
            if not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
                return -errno.EACCES
            # the descriptor's own file, whatever happened to the path since
            return os.open(f"/proc/self/fd/{found}",
                           flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW | O_LARGEFILE)
                           | os.O_CLOEXEC | O_NOCTTY)
        except OSError as e:
            return _err(e)
        finally:
            os.close(found)
    return -errno.ENOENT  # O_CREAT through a symlink to nowhere: not made


def _pack_stat(st: os.stat_result) -> bytes:
    return _STAT.pack(st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid, 0,
                      st.st_rdev, st.st_size, st.st_blksize, st.st_blocks,
                      st.st_atime_ns // 10**9, st.st_atime_ns % 10**9,
                      st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9,
                      st.st_ctime_ns // 10**9, st.st_ctime_ns % 10**9)


def _stream_stat(entry: Source | Sink) -> bytes:
    # A pipe, whatever the host made of it: its host fd and its inode are not the guest's.
    return _STAT.pack(0, 0, 1, stat.S_IFIFO | 0o600, 0, 0, 0, 0, 0, 4096, 0, *(0,) * 6)


def _store(mem: SandboxMemory, addr: int, data: bytes) -> int:
    if not mem.ok(addr, len(data), True):
        return -errno.EFAULT
    mem.write(addr, data)
    return 0


def _fstat(files: FileTable, mem: SandboxMemory, fd: int, buf: int) -> int:
    entry = files.get(fd)
    if entry is None:
        return -errno.EBADF
    if not isinstance(entry, OpenFile):
        return _store(mem, buf, _stream_stat(entry))
    try:
        return _store(mem, buf, _pack_stat(os.fstat(entry.fd)))
    except OSError as e:
        return _err(e)


def _fstatat(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int, buf: int,
             flags: int) -> int:
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH | 0x800):  # 0x800: AT_NO_AUTOMOUNT
        return -errno.EINVAL
    if flags & AT_EMPTY_PATH and read_path(mem, addr) == b"":
        return _fstat(files, mem, _int(dirfd), buf)
    if flags & AT_SYMLINK_NOFOLLOW:
        def lstat(name: bytes, pfd: int) -> int:
            return _store(mem, buf, _pack_stat(os.stat(name, dir_fd=pfd, follow_symlinks=False)))

        r = _on_name(files, mem, dirfd, addr, False, lstat)
        if r != -errno.EBUSY:
            return r  # EBUSY: the preopen itself, which is no symlink: stat it below
    loc = _at(files, mem, dirfd, addr)
    if isinstance(loc, int):
        return loc
    try:
        fd = _openat2(loc[0], loc[1], O_PATH)
    except OSError as e:
        return _err(e)
    try:
        return _store(mem, buf, _pack_stat(os.fstat(fd)))
    finally:
        os.close(fd)


def _access(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int, mode: int,
            flags: int) -> int:
    if mode & ~7 or flags & ~(AT_SYMLINK_NOFOLLOW | 0x200):  # 0x200: AT_EACCESS
        return -errno.EINVAL
    loc = _at(files, mem, dirfd, addr)
    if isinstance(loc, int):
        return loc
    if mode & os.W_OK and not loc[2]:
        return -errno.EROFS
    import ctypes

    try:
        fd = _openat2(loc[0], loc[1], O_PATH | (O_NOFOLLOW if flags & AT_SYMLINK_NOFOLLOW else 0))
        try:
            return _raw_syscall(ctypes.c_long(SYS_FACCESSAT2), ctypes.c_long(fd),
                                ctypes.c_char_p(b""), ctypes.c_long(mode),
                                ctypes.c_long(AT_EMPTY_PATH | (flags & 0x200)))
        finally:
            os.close(fd)
    except OSError as e:
        return _err(e)


def _mkdir(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int, mode: int) -> int:
    def make(name: bytes, pfd: int) -> int:
        os.mkdir(name, mode & 0o777, dir_fd=pfd)
        return 0

    r = _on_name(files, mem, dirfd, addr, True, make)
    return -errno.EEXIST if r == -errno.EBUSY else r


def _unlink(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int, flags: int) -> int:
    if flags & ~AT_REMOVEDIR:
        return -errno.EINVAL

    def remove(name: bytes, pfd: int) -> int:
        (os.rmdir if flags & AT_REMOVEDIR else os.unlink)(name, dir_fd=pfd)
        return 0

    return _on_name(files, mem, dirfd, addr, True, remove)


def _rename(files: FileTable, mem: SandboxMemory, olddir: int, old: int, newdir: int,
            new: int, flags: int) -> int:
    if flags:
        return -errno.EINVAL  # RENAME_NOREPLACE, EXCHANGE, WHITEOUT: not offered

    def move(name: bytes, pfd: int) -> int:
        def to(name2: bytes, pfd2: int) -> int:
            os.rename(name, name2, src_dir_fd=pfd, dst_dir_fd=pfd2)
            return 0

        return _on_name(files, mem, newdir, new, True, to)

    return _on_name(files, mem, olddir, old, True, move)


def _readlink(files: FileTable, mem: SandboxMemory, dirfd: int, addr: int, buf: int,
              size: int) -> int:
    if size <= 0 or size >> 63:
        return -errno.EINVAL

    def read(name: bytes, pfd: int) -> int:
        target = os.readlink(name, dir_fd=pfd)[:size]
        r = _store(mem, buf, target)
        return r or len(target)

    r = _on_name(files, mem, dirfd, addr, False, read)
    return -errno.EINVAL if r == -errno.EBUSY else r  # a directory is no symlink


def _getdents64(files: FileTable, mem: SandboxMemory, fd: int, buf: int, size: int) -> int:
    f = files.file(fd)
    if isinstance(f, int):
        return -errno.ENOTDIR if f == -errno.ESPIPE else f
    size = min(size, IO_CHUNK)
    if size >> 63 or not mem.ok(buf, size, True):
        return -errno.EFAULT
    import ctypes

    raw = ctypes.create_string_buffer(size)
    try:
        n = _raw_syscall(ctypes.c_long(SYS_GETDENTS64), ctypes.c_long(f.fd), raw,
                         ctypes.c_size_t(size))
    except OSError as e:
        return _err(e)
    mem.write(buf, raw.raw[:n])
    return n


def _getcwd(files: FileTable, mem: SandboxMemory, buf: int, size: int) -> int:
    path = b"/" + b"/".join(files.cwd) + b"\0"
    if size < len(path):
        return -errno.ERANGE
    return _store(mem, buf, path) or len(path)


def _chdir(files: FileTable, mem: SandboxMemory, addr: int) -> int:
    path = read_path(mem, addr)
    if isinstance(path, int):
        return path
    found = files.preopen_for(path) if path else None
    if found is None:
        return -errno.ENOENT
    pre, rest = found
    try:
        fd = _openat2(pre.fd, rest, O_PATH | O_DIRECTORY)
    except OSError as e:
        return _err(e)
    try:
        # Where it really is (symlinks and ".." resolved), as the kernel's getcwd would say
        # it, in the guest's terms: a path beneath the preopen's.
        where = _host_path(fd)
    finally:
        os.close(fd)
    if where != pre.host and not where.startswith(pre.host.rstrip(b"/") + b"/"):
        return -errno.EACCES  # moved out from under the preopen meanwhile
    files.cwd = pre.parts + _components(where[len(pre.host):])
    return 0


def _dup(files: FileTable, old: int, new: int | None, lowest: int = 0,
         cloexec: bool = False) -> int:
    entry = files.get(old)
    if entry is None:
        return -errno.EBADF
    if new is not None and not 0 <= new < files.limit:
        return -errno.EBADF
    if new == old:
        return new  # dup2(fd, fd): nothing to do (and no host descriptor to make)
    if isinstance(entry, OpenFile):
        if files.full() and new not in files.entries:
            return -errno.EMFILE
        try:
            entry = OpenFile(os.dup(entry.fd), entry.writable, entry.is_dir, cloexec)
        except OSError as e:
            return _err(e)
    if new is None:
        return files.add(entry, lowest)
    files.close(new)
    files.put(new, entry)
    return new


def _fcntl(files: FileTable, mem: SandboxMemory, fd: int, cmd: int, arg: int) -> int:
    entry = files.get(fd)
    if entry is None:
        return -errno.EBADF
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        return _dup(files, fd, None, arg & 0xFFFF_FFFF, cmd == F_DUPFD_CLOEXEC)
    if cmd == F_GETFD:
        return FD_CLOEXEC if isinstance(entry, OpenFile) and entry.cloexec else 0
    if cmd == F_SETFD:
        if isinstance(entry, OpenFile):
            entry.cloexec = bool(arg & FD_CLOEXEC)
        return 0
    if cmd == F_GETFL:
        if not isinstance(entry, OpenFile):
            return O_RDONLY if isinstance(entry, Source) else O_WRONLY
        import fcntl

        return fcntl.fcntl(entry.fd, F_GETFL) & ~O_LARGEFILE
    if cmd == F_SETFL:
        if isinstance(entry, OpenFile):
            import fcntl

            keep = fcntl.fcntl(entry.fd, F_GETFL) & ~(O_APPEND | O_NONBLOCK)
            fcntl.fcntl(entry.fd, F_SETFL, keep | (arg & (O_APPEND | O_NONBLOCK)))
        return 0
    if cmd in (F_SETLK, F_SETLKW):
        # Record locks are the host process's, shared by every tenant: a sandbox has one
        # thread and no other process to exclude, so it gets every lock it asks for.
        return 0
    if cmd == F_GETLK:
        return _store(mem, arg, F_UNLCK.to_bytes(2, "little"))
    return -errno.EINVAL


def _lseek(files: FileTable, fd: int, offset: int, whence: int) -> int:
    f = files.file(fd)
    if isinstance(f, int):
        return f
    try:
        return os.lseek(f.fd, offset - (1 << 64) if offset >> 63 else offset, whence)
    except OSError as e:
        return _err(e)


def _pio(files: FileTable, mem: SandboxMemory, fd: int, buf: int, n: int, off: int,
         write: bool) -> int:
    """pread64 / pwrite64 (write) at a file offset; at most IO_CHUNK bytes."""
    f = files.file(fd)
    if isinstance(f, int):
        return f
    if n >> 63 or off >> 63:
        return -errno.EINVAL
    n = min(n, IO_CHUNK)
    if not mem.ok(buf, n, not write):
        return -errno.EFAULT
    try:
        if write:
            return os.pwrite(f.fd, mem.read(buf, n), off)
        data = os.pread(f.fd, n, off)
    except OSError as e:
        return _err(e)
    mem.write(buf, data)
    return len(data)


def _on_file(files: FileTable, fd: int, act: Callable[[int], object]) -> int:
    f = files.file(fd)
    if isinstance(f, int):
        return -errno.EINVAL if f == -errno.ESPIPE else f
    try:
        act(f.fd)
        return 0
    except OSError as e:
        return _err(e)


def read_file(f: OpenFile, mem: SandboxMemory, vecs: list[tuple[int, int]]) -> int:
    """readv on an open file (vecs already checked and clipped)."""
    total = 0
    try:
        for base, n in vecs:
            if not n:
                continue
            data = os.read(f.fd, n)
            mem.write(base, data)
            total += len(data)
            if len(data) < n:
                break
    except OSError as e:
        return total or _err(e)
    return total


def write_file(f: OpenFile, data: bytes) -> int:
    try:
        return os.write(f.fd, data)
    except OSError as e:
        return _err(e)


def _ioctl(files: FileTable, fd: int, request: int) -> int:
    entry = files.get(fd)
    if entry is None:
        return -errno.EBADF
    if isinstance(entry, OpenFile):
        return -errno.ENOTTY
    return -errno.ENOTTY if request == TIOCGWINSZ else -errno.EINVAL


HANDLERS: dict[int, Handler] = {
    2: lambda a, m, f: _open(f, m, AT_FDCWD, a[0], a[1], a[2]),  # open
    257: lambda a, m, f: _open(f, m, a[0], a[1], a[2], a[3]),  # openat
    85: lambda a, m, f: _open(f, m, AT_FDCWD, a[0], O_CREAT | O_WRONLY | O_TRUNC, a[1]),  # creat
    3: lambda a, m, f: f.close(_int(a[0])),  # close
    4: lambda a, m, f: _fstatat(f, m, AT_FDCWD, a[0], a[1], 0),  # stat
    5: lambda a, m, f: _fstat(f, m, _int(a[0]), a[1]),  # fstat
    6: lambda a, m, f: _fstatat(f, m, AT_FDCWD, a[0], a[1], AT_SYMLINK_NOFOLLOW),  # lstat
    262: lambda a, m, f: _fstatat(f, m, a[0], a[1], a[2], a[3] & 0xFFFF_FFFF),  # newfstatat
    21: lambda a, m, f: _access(f, m, AT_FDCWD, a[0], a[1], 0),  # access
    269: lambda a, m, f: _access(f, m, a[0], a[1], a[2], 0),  # faccessat
    439: lambda a, m, f: _access(f, m, a[0], a[1], a[2], a[3]),  # faccessat2
    83: lambda a, m, f: _mkdir(f, m, AT_FDCWD, a[0], a[1]),  # mkdir
    258: lambda a, m, f: _mkdir(f, m, a[0], a[1], a[2]),  # mkdirat
    87: lambda a, m, f: _unlink(f, m, AT_FDCWD, a[0], 0),  # unlink
    84: lambda a, m, f: _unlink(f, m, AT_FDCWD, a[0], AT_REMOVEDIR),  # rmdir
    263: lambda a, m, f: _unlink(f, m, a[0], a[1], a[2]),  # unlinkat
    82: lambda a, m, f: _rename(f, m, AT_FDCWD, a[0], AT_FDCWD, a[1], 0),  # rename
    264: lambda a, m, f: _rename(f, m, a[0], a[1], a[2], a[3], 0),  # renameat
    316: lambda a, m, f: _rename(f, m, a[0], a[1], a[2], a[3], a[4]),  # renameat2
    89: lambda a, m, f: _readlink(f, m, AT_FDCWD, a[0], a[1], a[2]),  # readlink
    267: lambda a, m, f: _readlink(f, m, a[0], a[1], a[2], a[3]),  # readlinkat
    217: lambda a, m, f: _getdents64(f, m, _int(a[0]), a[1], a[2]),  # getdents64
    79: lambda a, m, f: _getcwd(f, m, a[0], a[1]),  # getcwd
    80: lambda a, m, f: _chdir(f, m, a[0]),  # chdir
    32: lambda a, m, f: _dup(f, _int(a[0]), None),  # dup
    33: lambda a, m, f: _dup(f, _int(a[0]), _int(a[1])),  # dup2
    292: lambda a, m, f: (-errno.EINVAL if _int(a[0]) == _int(a[1]) or a[2] & ~O_CLOEXEC
                          else _dup(f, _int(a[0]), _int(a[1]), cloexec=bool(a[2]))),  # dup3
    72: lambda a, m, f: _fcntl(f, m, _int(a[0]), _int(a[1]), a[2]),  # fcntl
    8: lambda a, m, f: _lseek(f, _int(a[0]), a[1], _int(a[2])),  # lseek
    17: lambda a, m, f: _pio(f, m, _int(a[0]), a[1], a[2], a[3], False),  # pread64
    18: lambda a, m, f: _pio(f, m, _int(a[0]), a[1], a[2], a[3], True),  # pwrite64
    77: lambda a, m, f: (-errno.EINVAL if a[1] >> 63
                         else _on_file(f, _int(a[0]), lambda fd: os.ftruncate(fd, a[1]))),
    74: lambda a, m, f: _on_file(f, _int(a[0]), os.fsync),  # fsync
    75: lambda a, m, f: _on_file(f, _int(a[0]), os.fdatasync),  # fdatasync
    16: lambda a, m, f: _ioctl(f, _int(a[0]), a[1] & 0xFFFF_FFFF),  # ioctl
}
