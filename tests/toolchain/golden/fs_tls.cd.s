	.bundle_align_mode 5
# Rule 5: %fs becomes the image's thread-pointer word __tmebox_tp.
	.text
	.globl	tls
	.type	tls, @function
	.p2align 5
tls:
	movq	__tmebox_tp(%rip), %rax
	mov	__tmebox_tp(%rip), %rdx
	movq	__tmebox_tp(%rip), %rcx
	movq	__tmebox_tp(%rip), %r11
	movq	%gs:40(%r11d), %rax
	movq	__tmebox_tp(%rip), %r11
	xorq	%gs:0x28(%r11d), %rdx
	movq	__tmebox_tp(%rip), %r11
	leaq	x@tpoff(%r11), %r11
	movl	%gs:(%r11d), %eax
	movq	__tmebox_tp(%rip), %r11
	leaq	y@tpoff(%r11), %r11
	movl	%eax, %gs:(%r11d)
	movq	__tmebox_tp(%rip), %r11
	movq	%gs:(%r11d,%eax,1), %rdx
	movq	__tmebox_tp(%rip), %r11
	leaq	(%rax,%r11), %r11
	movl	%gs:8(%r11d,%ebx,8), %ecx
	movq	__tmebox_tp(%rip), %r11
	movl	%gs:16(%r11d,%ebx,4), %ecx
	movq	__tmebox_tp(%rip), %r11
	leaq	x@tpoff(%r11,%rax), %r11
	movl	%gs:(%r11d), %ecx
	movq	__tmebox_tp(%rip), %r11
	sub	%gs:0(%r11d), %rax
	leaq	x@tpoff(%rax), %r11
	movl	%gs:(%r11d), %eax
	movq	x@gottpoff(%rip), %rdx
	movl	%gs:(%eax,%edx), %eax
	.bundle_lock
	popq	%r11
	andl	$-32, %r11d
	orq	%r14, %r11
	pushq	%r11
	ret
	.bundle_unlock
	.size	tls, .-tls
