	.bundle_align_mode 5
# Parsing: comments, ;-separated statements, inline-asm blocks, sections.
	.file	"parsing.c"
	.text
	.p2align 4
	.globl	parse
	.type	parse, @function
	.p2align 5
parse:
	movq	%gs:(%edi), %rax
	movq	%gs:8(%edi), %rdx
	movl	%gs:(%esi), %ecx
	movl	%gs:4(%esi), %ecx

	movl	%gs:8(%esi), %ecx
#APP
# 12 "parsing.c" 1
	lock cmpxchg	%edx, %gs:(%edi)
# 0 "" 2
#NO_APP
	movq	%gs:(%edi), %RAX
	mov	%gs:(%edi), %rax
	push %rbx
	pop %rbx
2:
	movl	%gs:(%edi), %eax
3:
	movl	%gs:(%esi), %eax
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
	movq	%gs:(%edi), %rdx
	.section	.text.unlikely,"ax",@progbits
cold:
	movq	%gs:(%eax), %rax
	.section	.init
	movq	%gs:(%ebx), %rax
	.section	.note.GNU-stack,"",@progbits
