	.bundle_align_mode 5
# Rule 1: every explicit memory operand goes through %gs with 32-bit registers.
	.text
	.globl	mem
	.type	mem, @function
	.p2align 5
mem:
	movq	%gs:8(%edi), %rax
	movl	%gs:(%eax,%ebx,8), %ecx
	movl	%gs:-4(%ebp,%r12d,4), %edx
	movb	%gs:(%r15d), %al
	movw	%ax, %gs:2(%r8d,%r9d)
	movq	%gs:foo+8(%eax), %rdx
	movq	%gs:foo+8(,%ecx,8), %rdx
	movq	%gs:-(8*4)(%esp), %rax
	movq	%gs:(foo+16)(%edx), %rax
	addr32 movl	%gs:foo, %eax
	addr32 movl	%eax, %gs:0x1000
	movq	.LC0(%rip), %rax
	movq	foo@GOTPCREL(%rip), %rax
	leaq	8(%rdi,%rsi,2), %rax
	leaq	.LC0(%rip), %rdx
	movslq	%gs:(%edx,%eax,4), %rax
	addq	%rdx, %rax
	movl	%gs:8(%eax,%ebx,4), %ecx
	movl	%gs:(%eax), %ecx
	movl	%gs:4(%eax), %ecx
	movzbl	%gs:(%esi,%edx), %eax
	movsbq	%gs:-1(%edi), %rcx
	movswl	%gs:(%edi), %ecx
	movslq	%gs:12(%esp), %rdx
	addl	$1, %gs:(%edi)
	incq	%gs:8(%esi)
	cmpq	%rax, %gs:16(%esp)
	testb	$1, %gs:(%edi)
	imulq	%gs:8(%esp), %rax
	xchgq	%rax, %gs:(%edi)
	lock xaddl	%eax, %gs:(%edx)
	lock cmpxchgq	%rcx, %gs:8(%edi)
	lock orl	$0, %gs:(%esp)
	setne	%gs:(%edi)
	cmovne	%gs:(%esi), %rax
	pushq	%gs:8(%eax)
	popq	%gs:16(%edi)
	movdqu	%gs:(%edi), %xmm0
	movaps	%xmm0, %gs:16(%esp)
	movups	%xmm1, %gs:-16(%edi,%edx)
	pxor	%gs:(%eax), %xmm2
	cvtsi2sdl	%gs:(%edi), %xmm0
	cvtsi2sdq	%gs:8(%edi), %xmm1
	movsd	%gs:(%edi), %xmm0
	movsd	%xmm0, %gs:8(%edi)
	cmpsd	$1, %gs:(%edi), %xmm0
	movq	%gs:(%edi), %xmm3
	movd	%xmm0, %gs:4(%esi)
	fldt	%gs:16(%esp)
	fstpt	%gs:(%edi)
	fildq	%gs:8(%esp)
	fnstcw	%gs:-2(%esp)
	fldcw	%gs:(%esp)
	fxch	%st(1)
	faddp	%st, %st(1)
	stmxcsr	%gs:-8(%esp)
	ldmxcsr	%gs:-8(%esp)
	prefetcht0	%gs:64(%esi)
	nopw	0x0(%rax,%rax,1)
	nopw	%cs:0x0(%rax,%rax,1)
	nopl	(%rax)
	nop
	bsfq	%gs:(%edi), %rax
	rdtsc
	.bundle_lock
	.byte 0x66,0x2e,0x0f,0x1f,0x84,0x00,0x00,0x00,0x00,0x00
	.byte 0x66,0x2e,0x0f,0x1f,0x84,0x00,0x00,0x00,0x00,0x00
	.byte 0x0f,0x1f,0x80,0x00,0x00,0x00,0x00
	call	__tmebox_cpuid
	.bundle_unlock
	pause
	mfence
	ud2
	ud2
	endbr64
	.bundle_lock
	popq	%r11
	andl	$-32, %r11d
	orq	%r14, %r11
	pushq	%r11
	ret
	.bundle_unlock
	.size	mem, .-mem
	.section	.rodata
.LC0:
	.quad	42
