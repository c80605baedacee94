	.bundle_align_mode 5
# Rule 3: string instructions are preceded by the confinement of %rdi/%rsi.
	.text
	.globl	str
	.type	str, @function
	.p2align 5
str:
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	rep stosq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	rep stosb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsl
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsw
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	stosb
	.bundle_unlock
	.bundle_lock
	movl	%esi, %esi
	orq	%r14, %rsi
	lodsb
	.bundle_unlock
	.bundle_lock
	movl	%esi, %esi
	orq	%r14, %rsi
	lodsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	repe cmpsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	repz cmpsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	repne scasb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	repnz scasl
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	rep stosl
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsq
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	rep stosb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsl
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	cmpsb
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsb	(%rsi), (%rdi)
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsb	%ds:(%rsi), %es:(%rdi)
	.bundle_unlock
	.bundle_lock
	movl	%edi, %edi
	orq	%r14, %rdi
	stosq	%rax, %es:(%rdi)
	.bundle_unlock
	# SSE movsd/cmpsd with operands are not string instructions
	movsd	%xmm1, %xmm0
	cmpsd	$0, %xmm1, %xmm0
	movsbl	%gs:(%esi), %eax
	movslq	%edi, %rdi
	popq	%r11
	.bundle_lock
	andl	$-32, %r11d
	orq	%r14, %r11
	jmp	*%r11
	.bundle_unlock
	.size	str, .-str
