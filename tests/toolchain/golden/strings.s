# Rule 3: string instructions are preceded by the confinement of %rdi/%rsi.
	.text
	.globl	str
	.type	str, @function
str:
	rep movsb
	rep movsq
	rep stosq
	rep stosb
	movsq
	movsb
	movsl
	movsw
	stosb
	lodsb
	lodsq
	repe cmpsb
	repz cmpsq
	repne scasb
	repnz scasl
	rep; movsb
	rep ; stosl
	rep
	movsq
	rep
	stosb
	movsd
	cmpsb
	rep movsb (%rsi), (%rdi)
	rep movsb %ds:(%rsi), %es:(%rdi)
	stosq %rax, %es:(%rdi)
	# SSE movsd/cmpsd with operands are not string instructions
	movsd	%xmm1, %xmm0
	cmpsd	$0, %xmm1, %xmm0
	movsbl	(%rsi), %eax
	movslq	%edi, %rdi
	ret
	.size	str, .-str
