# Parsing: comments, ;-separated statements, inline-asm blocks, sections.
	.file	"parsing.c"
	.text
	.p2align 4
	.globl	parse
	.type	parse, @function
parse:
	movq (%rdi), %rax ; movq 8(%rdi), %rdx   # two statements
	/* a comment */ movl (%rsi), %ecx
	movl 4(%rsi), %ecx /* a comment
	that spans lines; movq (%rax), %rax is not code here
	*/ movl 8(%rsi), %ecx
#APP
# 12 "parsing.c" 1
	lock ; cmpxchg %edx, (%rdi)
# 0 "" 2
#NO_APP
	MOVQ	(%RDI), %RAX
	mov (%rdi),%rax
	push %rbx
	pop %rbx
	2: movl (%rdi), %eax; 3: movl (%rsi), %eax
	.pushsection .rodata.str1.1,"aMS",@progbits,1
.LC1:
	.string	"movq (%rax), %rbx; # not code"
	.popsection
	movq	.LC1(%rip), %rax
	.section	.data.rel.local,"aw"
	.align 8
tbl:
	.quad	parse
	.previous
	movq	(%rdi), %rdx
	.section	.text.unlikely,"ax",@progbits
cold:
	movq	(%rax), %rax
	.section	.init
	movq	(%rbx), %rax
	.section	.note.GNU-stack,"",@progbits
