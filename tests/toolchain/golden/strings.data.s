# Rule 3: string instructions are preceded by the confinement of %rdi/%rsi.
	.text
	.globl	str
	.type	str, @function
str:
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsb
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsq
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	rep stosq
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	rep stosb
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsq
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsb
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsl
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsw
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	stosb
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	lodsb
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	lodsq
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	repe cmpsb
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	repz cmpsq
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	repne scasb
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	repnz scasl
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsb
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	rep stosl
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsq
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	rep stosb
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	movsl
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	cmpsb
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsb	(%rsi), (%rdi)
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	movl	%esi, %esi
	leaq	(%r14,%rsi), %rsi
	rep movsb	%ds:(%rsi), %es:(%rdi)
	movl	%edi, %edi
	leaq	(%r14,%rdi), %rdi
	stosq	%rax, %es:(%rdi)
	# SSE movsd/cmpsd with operands are not string instructions
	movsd	%xmm1, %xmm0
	cmpsd	$0, %xmm1, %xmm0
	movsbl	%gs:(%esi), %eax
	movslq	%edi, %rdi
	ret
	.size	str, .-str
