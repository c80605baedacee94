# Rule 5: %fs becomes the image's thread-pointer word __tmebox_tp.
	.text
	.globl	tls
	.type	tls, @function
tls:
	movq	%fs:0, %rax
	mov	%fs:0,%rdx
	movq	%fs:0x0, %rcx
	movq	%fs:40, %rax
	xorq	%fs:0x28, %rdx
	movl	%fs:x@tpoff, %eax
	movl	%eax, %fs:y@tpoff
	movq	%fs:(%rax), %rdx
	movl	%fs:8(%rax,%rbx,8), %ecx
	movl	%fs:16(,%rbx,4), %ecx
	movl	%fs:x@tpoff(%rax), %ecx
	sub	%fs:0,%rax
	movl	x@tpoff(%rax), %eax
	movq	x@gottpoff(%rip), %rdx
	movl	(%rax,%rdx), %eax
	ret
	.size	tls, .-tls
