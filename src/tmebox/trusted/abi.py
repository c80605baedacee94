"""The binary interface between rewriter, verifier and runtime (docs/design.md)."""

BUNDLE_SIZE = 32
BUNDLE_MASK = -BUNDLE_SIZE
PAGE_SIZE = 4096

BASE_REG = "r14"  # holds the window base; never written by sandbox code
SCRATCH_REG = "r11"  # rewriter scratch

RT_SECTION = ".tmebox_rt"  # one page at image offset 0, replaced by the runtime
RT_PAGE_SIZE = PAGE_SIZE
RT_SYSCALL_OFFSET = 0x000  # __tmebox_rt_syscall
RT_EXIT_OFFSET = 0x020  # __tmebox_rt_exit
RT_SYSCALL_SYMBOL = "__tmebox_rt_syscall"
RT_EXIT_SYMBOL = "__tmebox_rt_exit"
TP_SYMBOL = "__tmebox_tp"  # the thread-pointer word that replaces %fs

INFO_SECTION = ".tmebox_info"
IMAGE_FORMAT = 1
# An image file may start with one `#!` line of at most this many bytes (the kernel's limit)
# so that it runs as a program; readers skip it, it is no part of the image.
LAUNCHER_MAX = 256
ISOLATION_MODES = ("data", "code+data")
CPU_LEVELS = ("x86-64", "x86-64-v2", "x86-64-v3")  # lowest first (trusted.image.CpuLevel)
CPUID_SYMBOL = "__tmebox_cpuid"  # cpuid as the image's level shows it (toolchain glue)
DEFAULT_ISOLATION = "code+data"
DEFAULT_STACK_SIZE = 1 << 20

SYS_TMEBOX_PARK = 0x7100  # private runtime call: libc is initialised, wait for run()
SYS_TMEBOX_HOST = 0x7200  # runtime call SYS_TMEBOX_HOST + k: the image's host function k
CALL_THUNK_SYMBOL = "__tmebox_call"  # loads argument registers from a frame (typed calls)

WINDOW_SHIFT = 32
WINDOW_SIZE = 1 << WINDOW_SHIFT
GUARD_SIZE = 64 << 10
IMAGE_WINDOW_OFFSET = GUARD_SIZE  # native backend: image offset 0 sits here

# Compiler flags every sandboxed C translation unit needs (docs/design.md).
COMMON_CFLAGS = (
    "-ffixed-r11",
    "-ffixed-r14",
    "-mno-red-zone",
    "-fno-stack-protector",
    "-mno-tls-direct-seg-refs",
    "-fPIE",
    "-march=x86-64",  # (a unit for a higher CPU level adds its -march after these)
    "-mtune=generic",
    "-fno-asynchronous-unwind-tables",
    "-fno-exceptions",
)
CODE_DATA_CFLAGS = ("-falign-functions=32", "-fno-jump-tables")
