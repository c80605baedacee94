# Rule 2: push/pop/call/ret and `and $neg,%rsp` stay; other %rsp writes become
# a 32-bit write plus `orq %r14, %rsp`, bundle-locked in code+data mode.
	.text
	.globl	frame
	.type	frame, @function
frame:
	pushq	%rbp
	movq	%rsp, %rbp
	pushq	%rbx
	andq	$-32, %rsp
	and	$-16,%rsp
	andq	$0xfffffffffffffff0, %rsp
	subq	$40, %rsp
	subq	$4096, %rsp
	orq	$0x0, (%rsp)
	subq	$65536, %rsp
	addq	$-128, %rsp
	subq	%rax, %rsp
	leaq	15(%rax), %rdx
	andq	$-16, %rdx
	subq	%rdx, %rsp
	movq	%rsp, %rax
	addq	$65576, %rsp
	leaq	-8(%rbp), %rsp
	movq	%rbp, %rsp
	mov	%rdi,%rsp
	movq	8(%rdi), %rsp
	movl	%eax, %esp
	andl	$-16, %esp
	cmpq	%rax, %rsp
	testq	$15, %rsp
	pushq	%rsp
	popq	%rbx
	pushfq
	popq	%rbp
	leave
	leaveq
	ret
	.size	frame, .-frame

# gcc's stack-clash probing loop
	.globl	probe
	.type	probe, @function
probe:
	leaq	-12288(%rsp), %r11
.LPSRL0:
	subq	$4096, %rsp
	orq	$0, (%rsp)
	cmpq	%r11, %rsp
	jne	.LPSRL0
	subq	$16, %rsp
	movl	$0, (%rsp)
	addq	$12304, %rsp
	ret
	.size	probe, .-probe
