# tmebox's own setjmp/longjmp for the sandbox libc (replaces musl's x86_64
# versions, which save and restore %r14: in a sandbox %r14 is the window base,
# constant and never written, so it is left out).  jmp_buf layout (8-byte
# slots): rbx, rbp, r12, r13, (unused), r15, rsp after return, return address.
# sigsetjmp keeps musl's slots 8 and 9.
	.text
	.global __setjmp
	.global _setjmp
	.global setjmp
	.type __setjmp,@function
	.type _setjmp,@function
	.type setjmp,@function
__setjmp:
_setjmp:
setjmp:
	movq %rbx,(%rdi)
	movq %rbp,8(%rdi)
	movq %r12,16(%rdi)
	movq %r13,24(%rdi)
	movq %r15,40(%rdi)
	leaq 8(%rsp),%rdx
	movq %rdx,48(%rdi)
	movq (%rsp),%rdx
	movq %rdx,56(%rdi)
	xorl %eax,%eax
	ret

	.global _longjmp
	.global longjmp
	.type _longjmp,@function
	.type longjmp,@function
_longjmp:
longjmp:
	xorl %eax,%eax
	cmpl $1,%esi
	adcl %esi,%eax
	movq (%rdi),%rbx
	movq 8(%rdi),%rbp
	movq 16(%rdi),%r12
	movq 24(%rdi),%r13
	movq 40(%rdi),%r15
	movq 48(%rdi),%rsp
	jmp *56(%rdi)
