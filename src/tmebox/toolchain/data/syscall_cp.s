# tmebox's own __syscall_cp_asm for the sandbox libc (replaces musl's x86_64
# version, which keeps a value in %r11 across rewritten instructions: %r11 is
# the rewriter's scratch register).  Same contract as musl's: the first
# argument points at the thread's cancel flag, then the syscall number and six
# arguments; __cp_begin/__cp_end/__cp_cancel mark the cancellation window.
	.text
	.global __cp_begin
	.hidden __cp_begin
	.global __cp_end
	.hidden __cp_end
	.global __cp_cancel
	.hidden __cp_cancel
	.hidden __cancel
	.global __syscall_cp_asm
	.hidden __syscall_cp_asm
	.type __syscall_cp_asm,@function
__syscall_cp_asm:
__cp_begin:
	movl (%rdi),%eax
	testl %eax,%eax
	jnz __cp_cancel
	movq %rsi,%rax
	movq %rdx,%rdi
	movq %rcx,%rsi
	movq %r8,%rdx
	movq %r9,%r10
	movq 8(%rsp),%r8
	movq 16(%rsp),%r9
	syscall
__cp_end:
	ret
__cp_cancel:
	jmp __cancel
