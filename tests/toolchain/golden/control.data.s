# Rules 4 and 7-9: calls, jumps, returns and the runtime call.
	.text
	.globl	ctl
	.type	ctl, @function
ctl:
	endbr64
	call	foo
	call	foo
	call	foo@PLT
	call	*%rax
	call	*%r11
	call	*%gs:8(%eax)
	call	*foo@GOTPCREL(%rip)
	callq	*%gs:(%ebx,%ecx,8)
	call	*%rdx
	jmp	*%rax
	jmp	*%rax
	jmpq	*%gs:8(%edi)
	jmp	*%gs:.L4(,%eax,8)
	call	__tmebox_rt_syscall
	testl	%eax, %eax
	jne	.L2
	je	1f
	jrcxz	.L2
	loop	.L2
1:
	jmp	.L2
.L2:
	jmp	foo
	jmp	foo@PLT
	ret
	ret
	ret
	ret
	.size	ctl, .-ctl

# Labels as values (computed goto) and a hand-written jump table: code labels whose
# address is taken are aligned in code+data mode, numeric and data labels are not.
	.globl	cgoto
	.type	cgoto, @function
cgoto:
	leaq	.L9(%rip), %rax
	movq	$.L10, %rdx
	leaq	.LC0(%rip), %rcx
	leaq	1f(%rip), %rcx
	jmp	*%rax
.L9:
	nop
.L10:
	jmp	*%gs:.Ltab(,%edi,8)
.L11:
1:
	ret
	.size	cgoto, .-cgoto
	.section	.rodata
.LC0:
	.quad	.L11
.Ltab:
	.quad	.L11-.L9, .L10
	.text

# A function whose .type comes after the label, and one that is not typed.
	.globl	late
late:
	ret
	.type	late, @function
	.size	late, .-late
untyped:
	ret
