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
	and	$-16, %rsp
	andq	$0xfffffffffffffff0, %rsp
	subl	$40, %esp
	leaq	(%rsp,%r14), %rsp
	subl	$4096, %esp
	leaq	(%rsp,%r14), %rsp
	orq	$0x0, %gs:(%esp)
	subl	$65536, %esp
	leaq	(%rsp,%r14), %rsp
	addl	$-128, %esp
	leaq	(%rsp,%r14), %rsp
	subl	%eax, %esp
	leaq	(%rsp,%r14), %rsp
	leaq	15(%rax), %rdx
	andq	$-16, %rdx
	subl	%edx, %esp
	leaq	(%rsp,%r14), %rsp
	movq	%rsp, %rax
	addl	$65576, %esp
	leaq	(%rsp,%r14), %rsp
	leal	-8(%rbp), %esp
	leaq	(%rsp,%r14), %rsp
	movl	%ebp, %esp
	leaq	(%rsp,%r14), %rsp
	movl	%edi, %esp
	leaq	(%rsp,%r14), %rsp
	movl	%gs:8(%edi), %esp
	leaq	(%rsp,%r14), %rsp
	movl	%eax, %esp
	leaq	(%rsp,%r14), %rsp
	andl	$-16, %esp
	leaq	(%rsp,%r14), %rsp
	cmpq	%rax, %rsp
	testq	$15, %rsp
	pushq	%rsp
	popq	%rbx
	pushfq
	popq	%rbp
	movl	%ebp, %esp
	leaq	(%rsp,%r14), %rsp
	popq	%rbp
	movl	%ebp, %esp
	leaq	(%rsp,%r14), %rsp
	popq	%rbp
	ret
	.size	frame, .-frame

# gcc's stack-clash probing loop
	.globl	probe
	.type	probe, @function
probe:
	leaq	-12288(%rsp), %r11
.LPSRL0:
	subl	$4096, %esp
	leaq	(%rsp,%r14), %rsp
	orq	$0, %gs:(%esp)
	cmpq	%r11, %rsp
	jne	.LPSRL0
	subl	$16, %esp
	leaq	(%rsp,%r14), %rsp
	movl	$0, %gs:(%esp)
	addl	$12304, %esp
	leaq	(%rsp,%r14), %rsp
	ret
	.size	probe, .-probe
