	.bundle_align_mode 5
# Rule 3: string instructions are preceded by the confinement of %rdi/%rsi.
	.text
	.globl	str
	.type	str, @function
	.p2align 5
str:
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	rep stosq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	rep stosb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsl
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsw
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	stosb
	.bundle_unlock
	.bundle_lock
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	lodsb
	.bundle_unlock
	.bundle_lock
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	lodsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	repe cmpsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	repz cmpsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	repne scasb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	repnz scasl
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	rep stosl
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	rep stosb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsl
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	cmpsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsb	(%rsi), (%rdi)
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsb	%ds:(%rsi), %es:(%rdi)
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	stosq	%rax, %es:(%rdi)
	.bundle_unlock
	# SSE movsd/cmpsd with operands are not string instructions
	movsd	%xmm1, %xmm0
	cmpsd	$0, %xmm1, %xmm0
	movsbl	%gs:(%esi), %eax
	movslq	%edi, %rdi
	.bundle_lock
	popq	%r11
	andl	$-32, %r11d
	orq	%r14, %r11
	pushq	%r11
	ret
	.bundle_unlock
	.size	str, .-str
