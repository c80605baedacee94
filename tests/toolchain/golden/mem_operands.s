# Rule 1: every explicit memory operand goes through %gs with 32-bit registers.
	.text
	.globl	mem
	.type	mem, @function
mem:
	movq	8(%rdi), %rax
	movl	(%rax,%rbx,8), %ecx
	movl	-4(%rbp,%r12,4), %edx
	movb	(%r15), %al
	movw	%ax, 2(%r8,%r9)
	movq	foo+8(%rax), %rdx
	movq	foo+8(,%rcx,8), %rdx
	movq	-(8*4)(%rsp), %rax
	movq	(foo+16)(%rdx), %rax
	movl	foo, %eax
	movl	%eax, 0x1000
	movq	.LC0(%rip), %rax
	movq	foo@GOTPCREL(%rip), %rax
	leaq	8(%rdi,%rsi,2), %rax
	leaq	.LC0(%rip), %rdx
	movslq	(%rdx,%rax,4), %rax
	addq	%rdx, %rax
	movl	%gs:8(%eax,%ebx,4), %ecx
	movl	%gs:(%rax), %ecx
	movl	4(%eax), %ecx
	movzbl	(%rsi,%rdx), %eax
	movsbq	-1(%rdi), %rcx
	movswl	(%rdi), %ecx
	movslq	12(%rsp), %rdx
	addl	$1, (%rdi)
	incq	8(%rsi)
	cmpq	%rax, 16(%rsp)
	testb	$1, (%rdi)
	imulq	8(%rsp), %rax
	xchgq	%rax, (%rdi)
	lock xaddl	%eax, (%rdx)
	lock cmpxchgq	%rcx, 8(%rdi)
	lock orl	$0, (%rsp)
	setne	(%rdi)
	cmovne	(%rsi), %rax
	pushq	8(%rax)
	popq	16(%rdi)
	movdqu	(%rdi), %xmm0
	movaps	%xmm0, 16(%rsp)
	movups	%xmm1, -16(%rdi,%rdx)
	pxor	(%rax), %xmm2
	cvtsi2sdl	(%rdi), %xmm0
	cvtsi2sdq	8(%rdi), %xmm1
	movsd	(%rdi), %xmm0
	movsd	%xmm0, 8(%rdi)
	cmpsd	$1, (%rdi), %xmm0
	movq	(%rdi), %xmm3
	movd	%xmm0, 4(%rsi)
	fldt	16(%rsp)
	fstpt	(%rdi)
	fildq	8(%rsp)
	fnstcw	-2(%rsp)
	fldcw	(%rsp)
	fxch	%st(1)
	faddp	%st, %st(1)
	stmxcsr	-8(%rsp)
	ldmxcsr	-8(%rsp)
	prefetcht0	64(%rsi)
	nopw	0x0(%rax,%rax,1)
	nopw	%cs:0x0(%rax,%rax,1)
	nopl	(%rax)
	nop
	bsfq	(%rdi), %rax
	rdtsc
	cpuid
	pause
	mfence
	ud2
	hlt
	endbr64
	ret
	.size	mem, .-mem
	.section	.rodata
.LC0:
	.quad	42
