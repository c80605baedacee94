"""The Python API: Runtime (a backend and its images), Sandbox (one tenant).

    with tmebox.Runtime(backend="native") as rt:
        img = rt.load("prog.box")
        sb = rt.spawn(img, argv=["prog"], stdout=bytearray())
        status = sb.run()

See docs/runtime.md for the whole interface.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tmebox.errors import (
    CpuLevelError,
    HostError,
    IsolationError,
    MissingImport,
    OutOfSandboxes,
    RuntimeClosed,
    SandboxDestroyed,
    SandboxError,
    SandboxExited,
    SandboxFault,
    SandboxInterrupted,
    SandboxTimeout,
    TmeboxError,
    VerificationError,
)
from tmebox.runtime import syscalls
from tmebox.runtime.backend import (
    STOP_BADSTACK,
    STOP_FAULT,
    STOP_INTERRUPTED,
    STOP_RETURN,
    STOP_SYSCALL,
    STOP_TIMEOUT,
    STOPPED,
    FastCallSpec,
    FaultInfo,
    FaultKind,
    classify,
)
from tmebox.runtime.files import (
    DEFAULT_FD_LIMIT,
    FileTable,
    OpenFile,
    direct_marks,
    parse_dirs,
)
from tmebox.runtime.host import (
    CHostFunction,
    FrameReader,
    IntCall,
    from_register,
    pack_frame,
    to_register,
)
from tmebox.runtime.loader import ImagePlan, initial_stack, plan_from_image
from tmebox.runtime.memory import GuardedMemory, SandboxMemory, SandboxMemoryError
from tmebox.runtime.snapshot import Snapshot, capture_runs
from tmebox.runtime.streams import Sink, Source
from tmebox.trusted import abi
from tmebox.trusted.image import Isolation
from tmebox.trusted.record import Record, replace
from tmebox.trusted.signature import FRAME_SIZE, FRAME_SSE, Signature

TYPE_CHECKING = False  # (not typing's: `tmebox run` does without typing)
if TYPE_CHECKING:
    from typing import Any

    from tmebox.runtime.backend import Backend, Engine, FastCall

HostFunction = Callable[..., object] | CHostFunction  # fn(caller: Sandbox, *args) -> result
_INTERNAL = "__tmebox"  # the toolchain's own exports (the call thunk)

__all__ = ["BACKENDS", "DEFAULT_MAX_SANDBOXES", "HostFunction", "Isolation", "LoadedImage",
           "Runtime", "Sandbox", "Snapshot", "as_int32"]

BACKENDS = ("native", "tme")
DEFAULT_MAX_SANDBOXES = 1024
CALL_FRAME_GAP = 128  # bytes left between the parked stack pointer and a call()'s frame
_MASK64 = (1 << 64) - 1
_SIGN64 = 1 << 63
_PAD = tuple((0,) * (6 - n) for n in range(7))



def as_int32(value: int) -> int:
    """The C `int` a function returned (call() gives the whole of %rax, signed 64-bit)."""
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >> 31 else value


def _signed_args(name: str, args: tuple[int, ...]) -> list[int]:
    out = []
    for i, a in enumerate(args):
        if not isinstance(a, int):
            raise TypeError(f"call({name!r}): argument {i} is {type(a).__name__}, not int")
        a &= _MASK64
        out.append(a - (1 << 64) if a & _SIGN64 else a)
    return out


def _check_timeout(value: object) -> None:
    if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool)
                                  and 0 < value < 1e9):
        raise ValueError(f"timeout must be a positive number of seconds, not {value!r}")


def _env_entry(key: object, value: object) -> str:
    if not isinstance(key, str) or not isinstance(value, str):
        raise TypeError(f"spawn(env=...): {key!r}: keys and values must be str")
    if not key or "=" in key or "\0" in key or "\0" in value:
        raise ValueError(f"spawn(env=...): {key!r}: a key is non-empty without '=' or NUL, "
                         "a value has no NUL")
    return f"{key}={value}"


def _make_backend(name: str, max_sandboxes: int, options: dict[str, Any]) -> Backend[Any]:
    # Imported when chosen: the native helper needs the CPU's FSGSBASE, tme needs unicorn.
    if name == "native":
        from tmebox.runtime.native import NativeBackend

        if options:
            raise TmeboxError(f"the native backend takes no options ({', '.join(options)})")
        return NativeBackend(max_sandboxes)
    if name == "tme":
        from tmebox.runtime.tme import TmeBackend

        try:
            return TmeBackend(max_sandboxes, **options)
        except TypeError as e:
            raise TmeboxError(f"tme backend: {e}") from None
    raise TmeboxError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def _bind_imports(plan: ImagePlan, functions: dict[str, HostFunction],
                  shown_as: str) -> tuple[HostFunction, ...]:
    missing = [name for name, _ in plan.imports if name not in functions]
    if missing:
        raise MissingImport(f"{shown_as}: host function(s) not defined: "
                            + ", ".join(f"{n}{dict(plan.imports)[n]}" for n in missing)
                            + " (Runtime.define them before load)")
    return tuple(functions[name] for name, _ in plan.imports)


class LoadedImage:
    """An image verified and prepared for one Runtime's backend (until the Runtime closes)."""

    def __init__(self, runtime: Runtime, plan: ImagePlan, prepared: Any,
                 host: tuple[HostFunction, ...] = ()) -> None:
        self.runtime = runtime
        self.plan = plan
        self._prepared = prepared
        self.layout = plan.layout()
        self.host_functions = host  # by runtime-call index: plan.imports[i] is host[i]
        self.frame_readers = tuple(FrameReader(sig) for _, sig in plan.imports)
        self.argv0 = Path(plan.name).name  # a sandbox's argv[0] unless spawn() is given one

    @property
    def prepared(self) -> Any:
        """The backend's copy (native: the sealed code memfd); gone once the Runtime closed."""
        if self._prepared is None:
            raise RuntimeClosed(f"{self.name}: the image was released when its Runtime closed")
        return self._prepared

    def _release(self) -> Any:
        prepared, self._prepared = self._prepared, None
        return prepared

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def isolation(self) -> Isolation:
        return Isolation(self.plan.isolation)

    @property
    def exports(self) -> dict[str, Signature | None]:
        """Exported functions and their C signatures (None: untyped, integers in, %rax out)."""
        return {name: self.plan.signatures.get(name) for name in self.plan.exports
                if not name.startswith(_INTERNAL)}

    @property
    def imports(self) -> dict[str, Signature]:
        """The host functions the image calls, with their C signatures."""
        return dict(self.plan.imports)

    def __repr__(self) -> str:
        return f"<LoadedImage {self.plan.name} {self.plan.isolation}>"


class Runtime:
    """A backend plus the images and sandboxes created through it.

    max_sandboxes bounds the sandboxes alive at once; the native backend
    checks at creation that vm.max_map_count allows that many windows.
    min_isolation is the weakest isolation mode load() accepts: the mode is written in
    the image, by whoever built it, so the host has the last word (docs/runtime.md
    "Choosing isolation").
    """

    def __init__(self, backend: str = "native", max_sandboxes: int = DEFAULT_MAX_SANDBOXES,
                 min_isolation: Isolation | str = Isolation.CODE_DATA,
                 **backend_options: Any) -> None:
        if max_sandboxes < 1:
            raise TmeboxError(f"max_sandboxes must be at least 1, not {max_sandboxes}")
        self.min_isolation = Isolation.parse(min_isolation)
        self.backend_name = backend
        self.max_sandboxes = max_sandboxes
        self._backend = _make_backend(backend, max_sandboxes, backend_options)
        self._lock = threading.Lock()
        self._sandboxes: set[Sandbox] = set()
        self._images: list[LoadedImage] = []
        self._closed = False
        self._host: dict[str, HostFunction] = {}

    def __enter__(self) -> Runtime:
        return self

    @property
    def backend(self) -> Backend[Any]:
        """The backend object (e.g. the tme backend's `platform`, `sync()`)."""
        return self._backend

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sandboxes(self) -> int:
        """How many sandboxes of this Runtime are alive."""
        return len(self._sandboxes)

    def define(self, name: str, fn: HostFunction) -> None:
        """Provide host function `name` to the images loaded after this.

        fn(caller, *args) gets the calling Sandbox and the arguments converted by the
        signature the image recorded; its result is converted back (docs/embedding.md).
        """
        if not (callable(fn) or isinstance(fn, CHostFunction)):
            raise TypeError(f"define({name!r}): {fn!r} is not callable")
        self._host[name] = fn

    def load(self, image: str | os.PathLike[str],
             imports: dict[str, HostFunction] | None = None) -> LoadedImage:
        """Read and verify an image file; nothing of it is mapped before it passes.

        The file is read once: the bytes verified are the bytes mapped. Every host
        function the image imports must be defined (define(), or `imports` here).
        """
        self._check_open()
        functions = {**self._host, **(imports or {})}
        from tmebox.trusted.image import Image
        from tmebox.trusted.verdict import stored

        parsed = Image.load(Path(image))
        mode = Isolation(parsed.isolation)
        if mode.strength < self.min_isolation.strength:
            raise IsolationError(
                f"{image}: built for isolation {mode.value!r}, weaker than this Runtime's "
                f"min_isolation {self.min_isolation.value!r}; {mode.value!r} does not confine "
                "control flow, so it suits only trusted code. To accept it, create the Runtime "
                f"with min_isolation={mode.value!r} (tmebox run --min-isolation {mode.value})")
        if parsed.level.rank and parsed.level.rank > self._backend.cpu_level().rank:
            raise CpuLevelError(
                f"{image}: built for {parsed.level.value}, which the {self.backend_name} "
                f"backend's CPU cannot run (it runs {self._backend.cpu_level().value}); "
                "rebuild it with a lower -march (tmebox cc -march=x86-64)")
        # A verdict kept for this content (authenticated, trusted/verdict.py) spares loading
        # the decoders: `tmebox run` of a known image starts in tens of milliseconds.
        verdict = stored(parsed.sha256)
        if verdict is None:
            from tmebox.trusted.verifier import verify_stored

            verdict = verify_stored(parsed)
        if not verdict.ok:
            raise VerificationError(replace(verdict, name=str(image)).summary())
        plan = plan_from_image(parsed)
        return self._prepare(plan, _bind_imports(plan, functions, str(image)))

    def load_unverified(self, plan: ImagePlan) -> LoadedImage:
        """Take a hand-built plan WITHOUT verifying its code (runtime tests and benchmarks).

        The code runs with the window's data confinement only as far as it was
        written to follow docs/design.md; nothing checks that it does, and
        min_isolation does not apply: the caller vouches for the code.
        """
        self._check_open()
        return self._prepare(plan, _bind_imports(plan, self._host, plan.name))

    def _prepare(self, plan: ImagePlan, host: tuple[HostFunction, ...]) -> LoadedImage:
        for fn, (name, sig) in zip(host, plan.imports, strict=True):
            if isinstance(fn, CHostFunction) and (self.backend_name != "native"
                                                  or sig.uses_sse):
                raise TmeboxError(f"{plan.name}: host function {name}{sig} is written in C "
                                  "(CHostFunction): that needs the native backend and an "
                                  "integer-only signature")
        loaded = LoadedImage(self, plan, self._backend.prepare(plan), host)
        with self._lock:
            if not self._closed:
                self._images.append(loaded)
                return loaded
        self._backend.release_image(loaded._release())
        raise RuntimeClosed("this Runtime was closed while the image was being loaded")

    def spawn(self, image: LoadedImage | Snapshot, argv: Sequence[str | bytes] | None = None,
              envp: Sequence[str | bytes] = (), stdin: Any = None, stdout: Any = None,
              stderr: Any = None, timeout: float | None = None,
              env: Mapping[str, str] | None = None, dirs: Mapping[str, Any] | None = None,
              memory_limit: int | None = None, fd_limit: int = DEFAULT_FD_LIMIT,
              cwd: str = "/") -> Sandbox:
        """A new sandbox of image with libc initialised (`_start` ran up to the park), or
        one in the state of a snapshot (Sandbox.snapshot(); no argv or environment then).

        The guest's environment is `env` (a mapping) or `envp` ("K=V" strings), nothing of
        the host's unless given (`env=os.environ` passes it all). It reaches no file but
        beneath `dirs` ({"/guest": "/host"} read-only, {"/guest": ("/host", "rw")}), holds
        at most fd_limit descriptors and maps at most memory_limit bytes of heap and mmap
        (None: as much as its window holds) - docs/runtime.md "Files" and "Limits". Its
        working directory is cwd, a guest path beneath one of dirs (or "/").
        """
        snap = image if isinstance(image, Snapshot) else None
        loaded = image.image if isinstance(image, Snapshot) else image
        if loaded.runtime is not self:
            raise TmeboxError(f"{loaded.name} was loaded by another Runtime")
        if snap is not None and (argv is not None or envp or env is not None):
            raise TypeError("spawn(snapshot): argv and the environment are the snapshot's")
        if env is not None:
            if envp:
                raise TypeError("spawn: give env or envp, not both")
            envp = [_env_entry(k, v) for k, v in env.items()]
        specs = parse_dirs(dirs or {})
        if memory_limit is not None and any(isinstance(f, CHostFunction)
                                            for f in loaded.host_functions):
            raise TmeboxError(f"{loaded.name}: memory_limit leaves pages of the window "
                              "unmapped, which a host function written in C (CHostFunction) "
                              "could touch: use Python host functions with it")
        if memory_limit is not None and (not isinstance(memory_limit, int)
                                         or isinstance(memory_limit, bool) or memory_limit < 0):
            raise ValueError(f"spawn: memory_limit must be a number of bytes >= 0, not "
                             f"{memory_limit!r}")
        origin = _Origin(list(argv) if argv is not None else [loaded.argv0], list(envp), snap,
                         memory_limit)
        with self._lock:
            self._check_open()  # under the lock: close() cannot miss this sandbox
            if len(self._sandboxes) >= self.max_sandboxes:
                raise OutOfSandboxes(
                    f"this Runtime already has {len(self._sandboxes)} sandboxes "
                    f"(max_sandboxes={self.max_sandboxes})")
            engine = self._backend.new_engine(loaded.prepared, snap)
            sb = Sandbox(self, loaded, engine, timeout, origin)
            self._sandboxes.add(sb)
        try:
            sb._begin(FileTable.open(Source(stdin), Sink(stdout, 1), Sink(stderr, 2), specs,
                                     fd_limit, cwd))
        except BaseException:
            sb.destroy()
            raise
        return sb

    def _forget(self, sb: Sandbox) -> None:
        with self._lock:
            self._sandboxes.discard(sb)

    def close(self) -> None:
        """Destroy every sandbox and release the images; both raise if used afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sandboxes, images = list(self._sandboxes), self._images
            self._images = []
        for sb in sandboxes:
            sb._destroy("destroyed when its Runtime was closed")
        for img in images:
            self._backend.release_image(img._release())
        self._backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosed("this Runtime is closed")


class Sandbox:
    """One tenant: a window, its memory and its registers.

    States: parked (libc initialised; call() and run() allowed), exited
    (main returned or exit was called), dead (faulted or timed out), destroyed
    (every method, and every access through `memory`, raises SandboxDestroyed).
    """

    # Slots: call() reads eight attributes per call; slot access is the cheaper kind.
    __slots__ = ("runtime", "image", "_engine", "_layout", "base", "memory", "_mem", "_timeout",
                 "_state", "exit_status", "_lock", "_rips", "_sigs", "_parked", "_call_rsp",
                 "_ret", "_proc", "_ran", "_fn", "_handle", "_gone", "_nested", "_fast", "_limit",
                 "_fast_exports", "_engine_lock", "_origin", "__dict__", "__weakref__")

    def __init__(self, runtime: Runtime, image: LoadedImage, engine: Engine,
                 timeout: float | None, origin: _Origin) -> None:
        self.runtime = runtime
        self.image = image
        self._origin = origin  # what reset() goes back to
        self._fast: FastCall | None = None  # until parked and an export is looked up
        self._limit: float | None = None  # a call(timeout=)'s, while it runs
        self.timeout = timeout
        self.state = "new"
        self.exit_status: int | None = None
        self._gone = ""  # how it was destroyed, once it is
        # Re-entrant: a host function the sandbox called may call back into it.
        self._lock = engine.new_lock()
        # interrupt() takes this one, not _lock (which the running call holds): destroy()
        # frees the engine under it, so that an interrupt never reaches a freed context.
        self._engine_lock = threading.Lock()
        self._attach(engine)

    def _attach(self, engine: Engine) -> None:
        """Take engine's window (at spawn, and again at reset)."""
        self._engine = engine
        # A backend may place each sandbox differently (tme: at its own pool offset).
        self._layout = engine.layout
        self.base: int = engine.base
        self._mem: SandboxMemory = engine.memory  # the runtime's own accesses
        # The host's: waits while the sandbox runs on another thread (docs/runtime.md).
        self.memory = GuardedMemory(self._mem, self._lock)
        self._rips: dict[str, int] = {}
        self._sigs: dict[str, IntCall | Signature | None] = {}  # None: untyped
        self._fast_exports: dict[str, object] = {}
        # One entry per host function running (innermost last): the engine state to resume
        # it from once a call back into this sandbox has used the engine (taken on demand),
        # and the stack pointer below which such a call runs.
        self._nested: list[list[Any]] = []  # [saved engine state | None, stack top | None]
        self._parked: object = None
        self._call_rsp = 0
        self._ret = self.base + self._layout.code_lo + abi.RT_EXIT_OFFSET
        self._proc: syscalls.ProcessState | None = None
        self._ran = False
        # The fast path of call(): fn(handle, rip, rsp, return_to, a0..a5).
        self._fn, self._handle = engine.invoker()

    def __repr__(self) -> str:
        return f"<Sandbox {self.image.name} at {self.base:#x} {self.state}>"

    @property
    def state(self) -> str:
        """new, parked, exited, dead or destroyed (the class docstring)."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        if self._fast is not None:
            self._fast.ready = value == "parked"

    @property
    def timeout(self) -> float | None:
        """Seconds each run() or call() may take, runtime calls included (None: no limit)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        _check_timeout(value)
        self._timeout = value
        if self._fast is not None:
            self._fast.timeout = value

    # -- life cycle --------------------------------------------------------------------------

    def _begin(self, files: FileTable) -> None:
        """Start-up, or the snapshot's state: the sandbox is then parked (or exited)."""
        o, L = self._origin, self._layout
        self._proc = syscalls.ProcessState(
            layout=L, base=self.base, tp_slot=L.code_lo + self.image.plan.tp_slot, files=files,
            memory_limit=o.memory_limit, deadline=self._engine.deadline)
        if o.snapshot is not None:
            self._proc.brk = L.code_lo + o.snapshot.brk
            self._proc.maps = [(L.code_lo + s, L.code_lo + e) for s, e in o.snapshot.maps]
        if o.memory_limit is not None:
            self._proc.confine(self._mem)
        if o.snapshot is None:
            self._start(o.argv, o.envp)
        else:
            self._from_snapshot(o.snapshot)

    def _watch_files(self) -> None:
        """Tell the backend of the guest's descriptors, and of every change to them from
        now on (Engine.mark_fd: the calls it services itself), before sandbox code first
        runs: until then nothing can use them, and a spawn that is never run pays nothing.
        Not with a memory_limit: then every access is checked against what is mapped, in
        Python."""
        proc = self._proc
        if proc is not None and proc.files.watch is None and proc.memory_limit is None:
            engine = self._engine
            proc.files.watch_with(lambda fd, entry: engine.mark_fd(fd, *direct_marks(entry)))

    def _start(self, argv: list[str | bytes], envp: list[str | bytes]) -> None:
        L, plan = self._layout, self.image.plan
        self._watch_files()
        rsp, stack = initial_stack(plan, L, self.base, argv, envp, os.urandom(16))
        self._mem.write(rsp, stack)
        with self._lock:
            self._engine.set_deadline(self.timeout)
            stop = self._engine.enter(self.base + L.code_lo + plan.entry, self.base + rsp, (),
                                      None)
            try:
                outcome = self._drive(stop)
            except _Exited:
                return  # the program ended during start-up; run() reports its status
        if outcome is not syscalls.Park:
            self.state = "dead"
            raise SandboxError(f"{self.image.name}: start-up jumped to {abi.RT_EXIT_SYMBOL} "
                               "instead of parking")
        self._park(self._engine.save(),
                   (self._engine.stack_pointer() - CALL_FRAME_GAP) & ~15)

    def _from_snapshot(self, snap: Snapshot) -> None:
        L, proc = self._layout, self._proc
        assert proc is not None
        origin = self.base + L.code_lo
        delta = origin - snap.lo
        self._engine.load_runs(snap.runs, snap.kept, origin)
        proc.parked = True
        proc.files.cwd = snap.cwd
        self._park(self._engine.rebase(snap.registers, snap.lo, snap.hi, delta),
                   origin + snap.call_rsp)

    def _park(self, registers: object, call_rsp: int) -> None:
        """Parked with these registers; calls start their frames at call_rsp."""
        self._parked = registers
        self._call_rsp = call_rsp
        self.state = "parked"
        if self._fast_exports:  # looked up during start-up (by a host function's call)
            self._make_fast()

    def _make_fast(self) -> None:
        """sb.call in C from now on (Engine.fast_call), made when an export first has an
        entry there (_lookup): a sandbox that is never called pays nothing for it."""
        with self._lock:
            if self._fast is not None or self.state != "parked":
                return
            L, plan = self._layout, self.image.plan
            fast = self._engine.fast_call(FastCallSpec(
                rsp=self._call_rsp, ret=self._ret, lock=self._lock, nested=self._nested,
                thunk=(self.base + L.code_lo + plan.exports[abi.CALL_THUNK_SYMBOL]
                       if abi.CALL_THUNK_SYMBOL in plan.exports else 0),
                slow=self.call, finish=self._finish, exports=self._fast_exports,
                imports=tuple(zip(self.image.host_functions, (s for _, s in plan.imports),
                                  strict=True)),
                caller=self, host_result=self._host_result, host_error=self._host_error,
                host_done=self._host_done))
            if fast is None:
                return
            fast.timeout, fast.ready = self._timeout, True
            self._fast = fast
            # The instance's own attribute (the sandbox has a __dict__ for it alone) comes
            # before the method below.
            self.__dict__["call"] = fast

    def snapshot(self) -> Snapshot:
        """Its memory and registers now, for rt.spawn(snapshot) to start sandboxes from
        (docs/runtime.md, "Snapshots"): parked, outside host functions, no file open."""
        with self._lock:
            self._check_state("snapshot")
            if self._nested:
                raise SandboxError(f"{self.image.name}: snapshot() from inside a host function")
            proc = self._proc
            assert proc is not None
            held = sorted(fd for fd, e in proc.files.entries.items() if isinstance(e, OpenFile))
            if held:
                raise SandboxError(f"{self.image.name}: snapshot(): file descriptor(s) "
                                   f"{', '.join(map(str, held))} are open; a snapshot holds no "
                                   "host file, close them first")
            L = self._layout
            used = proc.owned()
            origin = self.base + L.code_lo
            runs = capture_runs(self._mem, L, self.base, used)
            return Snapshot(
                image=self.image, runs=runs, kept=self._engine.keep_runs(runs),
                registers=self._parked, lo=origin, hi=self.base + max(e for _, e in used),
                brk=proc.brk - L.code_lo,
                maps=tuple((s - L.code_lo, e - L.code_lo) for s, e in proc.maps),
                call_rsp=self._call_rsp - origin, cwd=proc.files.cwd)

    def reset(self) -> None:
        """Back to how it was spawned, in a fresh window: the snapshot's state, or start-up
        run again (same argv and environment). Works in every state but destroyed; files
        are closed and the preopens opened anew; `base` and `memory` are the new window's
        (an old `memory` raises SandboxDestroyed)."""
        with self._lock:
            if self.state == "destroyed":
                self._check_state("reset")
            if self._nested:
                raise SandboxError(f"{self.image.name}: reset() from inside a host function")
            assert self._proc is not None
            files = self._proc.files.reopen()
            try:
                self._detach("reset")
                self._attach(self.runtime._backend.new_engine(self.image.prepared,
                                                              self._origin.snapshot))
            except BaseException:
                files.close_all()
                self.state = "destroyed"
                self._gone = "lost in reset()"
                self.runtime._forget(self)
                raise
            self.state, self.exit_status = "new", None
            try:
                self._begin(files)
            except BaseException:
                self._destroy("destroyed: its reset failed")
                raise

    def run(self) -> int:
        """Run main(argc, argv, envp) to its end; returns the exit status."""
        with self._lock:
            if self.state == "exited" and not self._ran:
                self._ran = True  # it exited during start-up: that is main's outcome
                assert self.exit_status is not None
                return self.exit_status
            self._check_state("run")
            if "main" not in self.image.plan.exports:
                raise SandboxError(f"{self.image.name} has no main() to run (its exported "
                                   "functions are for call())")
            if self._nested:
                raise SandboxError(f"{self.image.name}: run() from inside a host function "
                                   "(call() is allowed there)")
            self._ran = True
            self._watch_files()
            self._engine.restore(self._parked)
            self._parked = None
            self._engine.set_deadline(self.timeout)
            try:
                self._drive(self._engine.resume(0))
            except _Exited as e:
                return e.status
            except HostError:
                self.state = "dead"  # main() cannot go on past the failed host call
                raise
        self.state = "dead"
        raise SandboxError(f"{self.image.name}: main() returned to the runtime instead of "
                           "calling exit")

    def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Call an exported function.

        With the signature the image recorded (img.exports), arguments are checked and
        converted and so is the result; an untyped export (no debug information) takes up to
        6 integers and returns %rax as a signed 64-bit int (as_int32() gives a C int).
        timeout (seconds) limits this call instead of sb.timeout, runtime calls included.
        """
        if timeout is not None:
            return self._call_limited(name, args, timeout)
        rip = self._rips.get(name)
        if rip is None:
            rip = self._lookup(name)
        conv = self._sigs[name]
        if conv is None:
            return self._invoke(name, rip, args)
        if isinstance(conv, IntCall):
            return conv.result(self._invoke(name, rip, conv.args(args)))
        if len(args) != len(conv.params):
            raise TypeError(f"{name}{conv} takes {len(conv.params)} argument(s), "
                            f"{len(args)} given")
        return self._call_framed(name, rip, conv, args)

    def _call_limited(self, name: str, args: tuple[Any, ...], timeout: float) -> Any:
        _check_timeout(timeout)
        with self._lock:
            if self._nested:
                raise SandboxError(f"{self.image.name}: call({name!r}, timeout=...) from inside "
                                   "a host function: the outer call's limit applies")
            self._limit = timeout
            try:
                return Sandbox.call(self, name, *args)
            finally:
                self._limit = None

    def _call_framed(self, name: str, rip: int, sig: Signature, args: tuple[Any, ...]) -> Any:
        """Through the call thunk, which loads %xmm0-7 too: the frame sits below the call."""
        frame = pack_frame(sig, args, name)
        with self._lock:
            if self.state != "parked":
                self._check_state(f"call({name!r})")
            top = self._nested_top() if self._nested else self._call_rsp
            at = (top - FRAME_SIZE) & ~15
            self._mem.write(at, frame)
            thunk = self._rips.get(abi.CALL_THUNK_SYMBOL) or self._lookup(abi.CALL_THUNK_SYMBOL)
            rax = self._invoke(name, thunk, (at, rip), rsp=at - 16)
            xmm0 = self._mem.read_u64(at + FRAME_SSE)
        return from_register(sig.result, xmm0 if sig.result.is_float else rax)

    def _nested_top(self) -> int:
        """Where a call from inside a host function may put its stack: below the waiting
        guest's (saving that guest's registers first)."""
        inner = self._nested[-1]
        if inner[0] is None:
            inner[1] = (self._engine.stack_pointer() - CALL_FRAME_GAP) & ~15
            inner[0] = self._engine.save()
        return int(inner[1])

    def _invoke(self, name: str, rip: int, args: Sequence[Any], rsp: int | None = None) -> int:
        """Run the function at rip with integer arguments; %rax as a signed 64-bit int."""
        with self._lock:
            if self.state != "parked":
                self._check_state(f"call({name!r})")
            if self._nested:
                top = self._nested_top()  # the waiting guest must resume as it was
                if rsp is None:
                    rsp = top
            elif rsp is None:
                rsp = self._call_rsp
            # every call sets its own limit (or none): nothing is left over from an earlier one
            self._engine.set_deadline(self._limit or self._timeout)
            try:
                v = self._fn(self._handle, rip, rsp, self._ret, *args, *_PAD[len(args)])
            except (OverflowError, TypeError, IndexError):
                if len(args) > 6:
                    raise TypeError(f"call({name!r}) takes at most 6 arguments, got "
                                    f"{len(args)}") from None
                v = self._fn(self._handle, rip, rsp, self._ret,
                             *_signed_args(name, tuple(args)), *_PAD[len(args)])
            except KeyboardInterrupt:
                self.state = "dead"  # Ctrl-C stopped it somewhere in the middle
                raise
            if v == STOPPED:
                v = self._finish(name, self._engine.last_stop())
        return v

    def _finish(self, name: str, stop: int) -> int:
        """A call stopped with `stop`: service it to the end; %rax as a signed 64-bit int."""
        if stop != STOP_RETURN:
            self._drive(stop)
        v = self._engine.result()
        return v - (1 << 64) if v & _SIGN64 else v

    def symbol(self, name: str) -> int:
        """The sandbox address of an exported global (e.g. a buffer the host fills)."""
        with self._lock:
            if self.state == "destroyed":
                self._check_state(f"symbol({name!r})")
        off = self.image.plan.data_symbols.get(name)
        if off is None:
            raise SandboxError(f"{self.image.name} exports no data symbol {name!r}")
        return self.base + self._layout.code_lo + off

    def _lookup(self, name: str) -> int:
        if self.state == "destroyed":
            self._check_state(f"call({name!r})")
        plan = self.image.plan
        off = plan.exports.get(name)
        if off is None:
            raise SandboxError(f"{self.image.name} exports no function {name!r}")
        self._watch_files()  # (every call's first of a name comes here)
        if name in plan.unsupported:
            raise TypeError(f"{self.image.name}: {name} cannot be called from the host: "
                            f"{plan.unsupported[name]}")
        sig = plan.signatures.get(name)
        self._sigs[name] = IntCall(name, sig) if sig and not sig.uses_sse else sig
        rip = self._rips[name] = self.base + self._layout.code_lo + off
        entry = None if name.startswith(_INTERNAL) else self._engine.fast_export(rip, sig)
        if entry is not None:
            self._fast_exports[name] = entry  # later calls of it take the C path
            if self._fast is None:
                self._make_fast()
        return rip

    def alloc(self, n: int) -> int:
        """n bytes (rounded up to pages) of fresh zeroed memory in the sandbox's mmap area.

        Returns the sandbox pointer (full address); free it with free().
        """
        if n <= 0:
            raise ValueError(f"alloc({n}): size must be positive")
        with self._lock:
            self._check_state("alloc")
            pool = self._engine.pool
            if pool is not None:  # tme: 64-byte lines of the shared pool
                return pool.alloc(n)
            assert self._proc is not None
            off = self._proc.mmap_alloc((n + 4095) & ~4095)
        if off is None:
            raise SandboxError(f"{self.image.name}: no room for {n} bytes in the sandbox")
        return self.base + off

    def free(self, addr: int, n: int) -> None:
        """Give back memory from alloc()."""
        with self._lock:
            if self.state == "destroyed":
                self._check_state("free")
            pool = self._engine.pool
            if pool is not None:
                pool.free(addr, n)
                return
            assert self._proc is not None
            r = syscalls.handle(syscalls.SYS_MUNMAP, (addr, n, 0, 0, 0, 0), self._mem,
                                self._proc)
        if r != 0:
            raise SandboxError(f"free({addr:#x}, {n}): not memory from alloc()")

    def transfer(self, buf: int, n: int, to: Sandbox) -> int:
        """Hand n bytes at buf (from alloc()) to sandbox `to`; returns its address there.

        tme backend only: the lines are re-encrypted in place from this sandbox's KeyID
        to to's; nothing is copied and afterwards only `to` can read them.
        """
        with self._lock:
            self._check_state("transfer")
        pool = self._engine.pool
        if pool is None:
            raise TmeboxError("transfer needs the tme backend")
        if to.runtime is not self.runtime:
            raise TmeboxError("transfer: both sandboxes must belong to one Runtime")
        if to is self:
            raise TmeboxError("transfer: a sandbox cannot transfer to itself")
        # Both locks (in a fixed order, so that a.transfer(to=b) and b.transfer(to=a) do
        # not deadlock): `to` cannot be destroyed, and its KeyID reused by a new tenant,
        # while the lines are handed over.
        first, second = sorted((self, to), key=id)
        with first._lock, second._lock:
            self._check_state("transfer")
            if to.state == "destroyed":
                to._check_state("transfer (receiving)")
            return pool.transfer(buf, n, to._engine)

    def destroy(self) -> None:
        """Empty the window; every later use of the sandbox or its `memory` raises
        SandboxDestroyed (destroy() itself may be called again)."""
        self._destroy("destroyed")

    def _destroy(self, how: str) -> None:
        with self._lock:
            if self.state == "destroyed":
                return
            self.state = "destroyed"
            self._gone = how
            try:
                self._detach(how)
            finally:
                self.runtime._forget(self)

    def _detach(self, how: str) -> None:
        """Give the window up (destroy, reset): nothing of the host reaches it any more."""
        # the C path and its references back to this sandbox go; call() raises from now
        self.__dict__.pop("call", None)
        self._fast = None
        # First, so that no host access can reach the window whatever happens next.
        self._mem.close(f"{self._name()}: memory access: the sandbox was {how}")
        self._parked = None
        self._handle = None  # the native context is freed with the engine
        try:
            with self._engine_lock:
                self._engine.destroy()
        finally:
            if self._proc is not None:
                self._proc.files.close_all()
                self._proc.waker.close()

    def interrupt(self) -> None:
        """End the call running now, from any thread, with SandboxInterrupted: at once,
        also while it waits in a runtime call (a sleep, a read of the host's stdin) - not
        inside a host function, whose return it waits for. If no call runs, the next one
        ends so as soon as it starts. The sandbox is then dead, as after a timeout."""
        with self._engine_lock:
            if self.state == "destroyed":
                return
            self._engine.interrupt()
        if self._proc is not None:
            self._proc.waker.set()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- the run loop ------------------------------------------------------------------------

    def _name(self) -> str:
        return f"{self.image.name} (sandbox at {self.base:#x})"

    def _check_state(self, what: str) -> None:
        if self.state == "parked":
            return
        if self.state == "destroyed":
            raise SandboxDestroyed(f"{self._name()}: {what}: the sandbox was {self._gone}")
        if self.state == "exited":
            raise SandboxExited(f"{self.image.name}: {what}: the sandbox exited with status "
                                f"{self.exit_status}")
        if self.state == "dead":
            raise SandboxError(f"{self.image.name}: {what}: the sandbox faulted or timed out "
                               "earlier and cannot run again")
        raise SandboxError(f"{self.image.name}: {what}: the sandbox is {self.state}")

    def _drive(self, stop: int) -> Any:
        """Service runtime calls until the sandbox returns, parks, exits, faults or times out."""
        try:
            return self._drive_loop(stop)
        except KeyboardInterrupt:
            self.state = "dead"
            raise

    def _drive_loop(self, stop: int) -> Any:
        engine, proc, mem = self._engine, self._proc, self._mem
        assert proc is not None
        while True:
            if stop == STOP_SYSCALL:
                nr, args = engine.syscall()
                if 0 <= nr - abi.SYS_TMEBOX_HOST < len(self.image.host_functions):
                    stop = engine.resume(self._host_call(nr - abi.SYS_TMEBOX_HOST, args[0]))
                    continue
                try:
                    r = syscalls.handle(nr, args, mem, proc)
                except OSError as e:  # the host's stdio failed: the sandbox sees EIO
                    r = -(e.errno or 5)
                if isinstance(r, int):
                    stop = engine.resume(r)
                    continue
                if isinstance(r, syscalls.Park):
                    return syscalls.Park
                self.state = "exited"
                self.exit_status = r.status
                self._parked = None
                raise _Exited(r.status)
            if stop == STOP_RETURN:
                return STOP_RETURN
            self.state = "dead"
            if stop == STOP_INTERRUPTED:
                # Python's SIGINT handler ran too; this is where it usually surfaces.
                raise KeyboardInterrupt(f"{self.image.name} interrupted")
            if stop == STOP_TIMEOUT and engine.interrupted():
                raise SandboxInterrupted(f"{self.image.name}: interrupted (stopped at "
                                         f"{engine.fault().rip:#x})")
            if stop == STOP_TIMEOUT:
                raise SandboxTimeout(f"{self.image.name}: ran longer than "
                                     f"{self._limit or self.timeout} s "
                                     f"(stopped at {engine.fault().rip:#x})")
            if stop in (STOP_FAULT, STOP_BADSTACK):
                raise self._fault_error(engine.fault(), stop)
            raise SandboxError(f"{self.image.name}: the backend stopped with code {stop}")

    # Host functions. The native backend runs them from C (tmebox_fast.c) with the same steps,
    # and calls _host_result, _host_error and _host_done for what it leaves to Python.

    def _host_call(self, index: int, frame_addr: int) -> int:
        """Run host function `index` on the arguments its stub stored at frame_addr."""
        fn, reader = self.image.host_functions[index], self.image.frame_readers[index]
        try:
            values = reader.read(self._mem.read(frame_addr, reader.size)) if reader.size else ()
        except SandboxMemoryError:
            return -errno.EFAULT  # not a stub's frame: the guest made the call by hand
        if isinstance(fn, CHostFunction):
            return self._engine.call_c_host(fn.address, values)
        self._nested.append([None, None])
        try:
            bits = self._host_result(index, fn(self, *values))
        except Exception as e:
            raise self._host_error(index, e) from e
        finally:
            self._restore_waiting(self._nested.pop()[0])
        self._check_resumable(index)
        return bits - (1 << 64) if bits & _SIGN64 else bits

    def _host_result(self, index: int, value: object) -> int:
        """Host function `index`'s result as the register bits its signature says."""
        name, sig = self.image.plan.imports[index]
        return to_register(sig.result, value, f"host function {name}{sig}: its result")

    def _host_error(self, index: int, e: BaseException) -> HostError:
        """What the guest's call() raises when host function `index` raised e."""
        name, sig = self.image.plan.imports[index]
        err = HostError(f"{self.image.name}: host function {name}{sig} raised "
                        f"{type(e).__name__}: {e}")
        err.__cause__ = e
        return err

    def _host_done(self, index: int, saved: object) -> None:
        """Host function `index` returned (the C path's end of a host call)."""
        self._restore_waiting(saved)
        self._check_resumable(index)

    def _restore_waiting(self, saved: object) -> None:
        """The waiting guest as it was, if a call back into the sandbox ran meanwhile."""
        if saved is not None and self.state != "destroyed":
            self._engine.restore(saved)

    def _check_resumable(self, index: int) -> None:
        if self.state != "parked":
            # It destroyed its caller, or a nested call faulted: nothing to resume.
            self._check_state(f"return from host function {self.image.plan.imports[index][0]}")

    def _fault_error(self, f: FaultInfo, stop: int) -> SandboxFault:
        detail = f"in {self.image.name}"
        if stop == STOP_BADSTACK:
            kind = FaultKind.SEGV
            detail += ": runtime call with the stack pointer outside the stack"
        else:
            kind = classify(f, self._layout.stack_bottom)
        return SandboxFault(kind, address=self.base + f.address,
                            instruction=self._disassemble(f.rip), detail=detail)

    def _disassemble(self, off: int) -> str | None:
        if not self._mem.ok(off, 1, False) or off >= self._layout.code_hi:
            return f"rip {self.base + off:#x}"
        code = self._mem.read(off, min(15, self._layout.code_hi - off))
        try:
            import capstone

            md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            for ins in md.disasm(code, off - self._layout.code_lo):
                return f"image+{ins.address:#x}: {ins.mnemonic} {ins.op_str}".rstrip()
        except ImportError:
            pass
        return f"image+{off - self._layout.code_lo:#x}: {code[:8].hex(' ')}"


class _Origin(Record, frozen=True):
    """How a sandbox was spawned, which reset() does again."""

    argv: list[str | bytes]
    envp: list[str | bytes]
    snapshot: Snapshot | None
    memory_limit: int | None


class _Exited(SandboxExited):
    """Internal: unwinds _drive when the sandbox exits; run() turns it into a status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the sandbox exited with status {status}")
        self.status = status
