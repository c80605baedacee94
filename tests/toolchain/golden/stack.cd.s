	.bundle_align_mode 5
# Rule 2: push/pop/call/ret and `and $neg,%rsp` stay; other %rsp writes become
# a 32-bit write plus `orq %r14, %rsp`, bundle-locked in code+data mode.
	.text
	.globl	frame
	.type	frame, @function
	.p2align 5
frame:
	pushq	%rbp
	movq	%rsp, %rbp
	pushq	%rbx
	andq	$-32, %rsp
	and	$-16, %rsp
	andq	$0xfffffffffffffff0, %rsp
	.bundle_lock
	subl	$40, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	subl	$4096, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	orq	$0x0, %gs:(%esp)
	.bundle_lock
	subl	$65536, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	addl	$-128, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	subl	%eax, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	leaq	15(%rax), %rdx
	andq	$-16, %rdx
	.bundle_lock
	subl	%edx, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	movq	%rsp, %rax
	.bundle_lock
	addl	$65576, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	leal	-8(%rbp), %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	movl	%ebp, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	movl	%edi, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	movl	%gs:8(%edi), %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	movl	%eax, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	andl	$-16, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	cmpq	%rax, %rsp
	testq	$15, %rsp
	pushq	%rsp
	popq	%rbx
	pushfq
	popq	%rbp
	.bundle_lock
	movl	%ebp, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	popq	%rbp
	.bundle_lock
	movl	%ebp, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	popq	%rbp
	.bundle_lock
	popq	%r11
	andl	$-32, %r11d
	orq	%r14, %r11
	pushq	%r11
	ret
	.bundle_unlock
	.size	frame, .-frame

# gcc's stack-clash probing loop
	.globl	probe
	.type	probe, @function
	.p2align 5
probe:
	leaq	-12288(%rsp), %r11
.LPSRL0:
	.bundle_lock
	subl	$4096, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	orq	$0, %gs:(%esp)
	cmpq	%r11, %rsp
	jne	.LPSRL0
	.bundle_lock
	subl	$16, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	movl	$0, %gs:(%esp)
	.bundle_lock
	addl	$12304, %esp
	leaq	(%rsp,%r14), %rsp
	.bundle_unlock
	.bundle_lock
	popq	%r11
	andl	$-32, %r11d
	orq	%r14, %r11
	pushq	%r11
	ret
	.bundle_unlock
	.size	probe, .-probe
