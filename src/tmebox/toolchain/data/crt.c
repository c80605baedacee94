/* The tmebox crt: entry point of every sandbox image (docs/design.md,
 * "Calls into a sandbox").  Compiled through the same rewriter as user code;
 * TMEBOX_SYS_PARK is passed in by tmebox.toolchain.libc from abi.py. */

/* The thread pointer that replaces %fs: rewritten %fs accesses load it, the
 * runtime stores musl's arch_prctl(ARCH_SET_FS) argument here.  A tenant can
 * overwrite it, which is harmless: it is only ever used through %gs. */
unsigned long __tmebox_tp __attribute__((aligned(8), used));

int main(int, char **, char **) __attribute__((weak));
void _init(void) __attribute__((weak));
void _fini(void) __attribute__((weak));
int __libc_start_main(int (*)(int, char **, char **), int, char **,
                      void (*)(void), void (*)(void), void (*)(void));
void __tmebox_start_c(long *p) __attribute__((noreturn, used));

/* Entered like the kernel's entry: %rsp points at argc. */
__asm__(
    ".text\n"
    ".p2align 5\n"
    ".global _start\n"
    ".type _start,@function\n"
    "_start:\n"
    "	xorl %ebp,%ebp\n"
    "	movq %rsp,%rdi\n"
    "	andq $-16,%rsp\n"
    "	call __tmebox_start_c\n"
    "	ud2\n"
    ".size _start, .-_start\n");

static int __tmebox_main(int argc, char **argv, char **envp)
{
	long ret;
	/* libc is initialised: the runtime stops here after spawn() and resumes
	 * for run(); call() enters exports from this point's stack. */
	__asm__ __volatile__("syscall"
	                     : "=a"(ret)
	                     : "a"((long)TMEBOX_SYS_PARK)
	                     : "rcx", "r11", "memory");
	(void)ret;
	/* Through a pointer: a direct call to an undefined weak main would make
	 * the linker emit a PLT stub, code the verifier cannot accept. */
	int (*volatile entry)(int, char **, char **) = main;
	if (!entry)
		return 0;
	return entry(argc, argv, envp);
}

void __tmebox_start_c(long *p)
{
	int argc = (int)p[0];
	char **argv = (char **)(p + 1);
	__libc_start_main(__tmebox_main, argc, argv, _init, _fini, 0);
	__builtin_unreachable();
}
