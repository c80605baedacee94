# Rule 3: string instructions are preceded by the confinement of %rdi/%rsi.
	.text
	.globl	str
	.type	str, @function
str:
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsb
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsq
	movl	%edi, %edi
	orq	%r14, %rdi
	rep stosq
	movl	%edi, %edi
	orq	%r14, %rdi
	rep stosb
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsq
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsb
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsl
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsw
	movl	%edi, %edi
	orq	%r14, %rdi
	stosb
	movl	%esi, %esi
	orq	%r14, %rsi
	lodsb
	movl	%esi, %esi
	orq	%r14, %rsi
	lodsq
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	repe cmpsb
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	repz cmpsq
	movl	%edi, %edi
	orq	%r14, %rdi
	repne scasb
	movl	%edi, %edi
	orq	%r14, %rdi
	repnz scasl
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsb
	movl	%edi, %edi
	orq	%r14, %rdi
	rep stosl
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsq
	movl	%edi, %edi
	orq	%r14, %rdi
	rep stosb
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	movsl
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	cmpsb
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsb	(%rsi), (%rdi)
	movl	%edi, %edi
	orq	%r14, %rdi
	movl	%esi, %esi
	orq	%r14, %rsi
	rep movsb	%ds:(%rsi), %es:(%rdi)
	movl	%edi, %edi
	orq	%r14, %rdi
	stosq	%rax, %es:(%rdi)
	# SSE movsd/cmpsd with operands are not string instructions
	movsd	%xmm1, %xmm0
	cmpsd	$0, %xmm1, %xmm0
	movsbl	%gs:(%esi), %eax
	movslq	%edi, %rdi
	ret
	.size	str, .-str
