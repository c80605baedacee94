"""Hand-written sandbox programs (docs/design.md forms: %gs + 32-bit addressing)."""

from __future__ import annotations

from asm_image import assemble

BASIC = r"""
    .globl main
main:
    movl $1, %eax
    movl $1, %edi
    leaq msg(%rip), %rsi
    movl $6, %edx
    rtcall
    movl $42, %eax
    ret
msg: .ascii "hello\n"

    .globl args6
args6:                      # a0 + 2 a1 + 3 a2 + 4 a3 + 5 a4 + 6 a5
    leaq (%rdi,%rsi,2), %rax
    leaq (%rdx,%rdx,2), %rdx
    addq %rdx, %rax
    leaq (%rax,%rcx,4), %rax
    leaq (%r8,%r8,4), %r8
    addq %r8, %rax
    imulq $6, %r9
    addq %r9, %rax
    ret

    .globl neg
neg:
    movq $-5, %rax
    ret

    .globl taint            # fill non-argument registers and vector registers
taint:
    movabsq $0x4141414141414141, %rax
    movq %rax, %rbx
    movq %rax, %rbp
    movq %rax, %r10
    movq %rax, %r12
    movq %rax, %r13
    movq %rax, %r15
    movq %rax, %xmm3
    movq %rax, %xmm8
    movq %rax, %xmm15
    ret

    .globl leak             # OR of everything taint() set; 0 if nothing leaks
                            # (%r10 holds the entry address: the host calls through it)
leak:
    movq %rbx, %rax
    orq %rbp, %rax
    orq %r12, %rax
    orq %r13, %rax
    orq %r15, %rax
    movq %xmm3, %rdx
    orq %rdx, %rax
    movq %xmm8, %rdx
    orq %rdx, %rax
    movq %xmm15, %rdx
    orq %rdx, %rax
    ret

    .globl entry_r10
entry_r10:
    movq %r10, %rax
    ret

    .globl mmx_dirty         # leaves MMX state (full x87 tags) and odd control words
mmx_dirty:
    movq %rdi, %mm0
    movq %rdi, %mm7
    movl $0xc00, %gs:-64(%esp)
    fldcw %gs:-64(%esp)
    movl $0x7f80, %gs:-64(%esp)
    ldmxcsr %gs:-64(%esp)
    xorl %eax, %eax
    ret

    .globl x87_pending       # unmasks every x87 exception and leaves one pending
x87_pending:
    movl $0x0, %gs:-64(%esp)
    fldcw %gs:-64(%esp)
    fld1
    fldz
    fdivrp %st, %st(1)
    xorl %eax, %eax
    testl %edi, %edi
    jz 1f
    fwait                    # delivers it inside the sandbox
1:  ret

    .globl get_r14
get_r14:
    movq %r14, %rax
    ret

    .globl get_gsbase
get_gsbase:
    rdgsbase %rax
    ret

    .globl sum_bytes        # sum of n bytes at p
sum_bytes:
    xorl %eax, %eax
    xorl %ecx, %ecx
1:  cmpl %esi, %ecx
    jae 2f
    movzbl %gs:(%edi,%ecx), %edx
    addq %rdx, %rax
    incl %ecx
    jmp 1b
2:  ret

    .globl fill             # memset(p, c, n) through %gs
fill:
    xorl %ecx, %ecx
1:  cmpl %edx, %ecx
    jae 2f
    movb %sil, %gs:(%edi,%ecx)
    incl %ecx
    jmp 1b
2:  movl %edx, %eax
    ret

    .globl load64           # *(uint64_t *)p
load64:
    movq %gs:(%edi), %rax
    ret

    .globl store64          # *(uint64_t *)p = v
store64:
    movq %rsi, %gs:(%edi)
    ret

    .globl echo             # read up to n bytes of stdin into p, write them out
echo:
    pushq %rbx
    pushq %rbp
    movl %edi, %ebx
    movl %esi, %ebp
    xorl %edi, %edi
    movl %ebx, %esi
    orq %r14, %rsi
    movl %ebp, %edx
    xorl %eax, %eax
    rtcall
    movq %rax, %rdx
    movl $1, %edi
    movl %ebx, %esi
    orq %r14, %rsi
    movl $1, %eax
    rtcall
    popq %rbp
    popq %rbx
    ret

    .globl quit             # exit_group(a0)
quit:
    movl $231, %eax
    rtcall
    ud2

    .globl getpid_loop      # n runtime calls, returns the sum of their results
getpid_loop:
    pushq %rbx
    pushq %rbp
    movq %rdi, %rbx
    xorl %ebp, %ebp
1:  testq %rbx, %rbx
    je 2f
    movl $39, %eax
    rtcall
    addq %rax, %rbp
    decq %rbx
    jmp 1b
2:  movq %rbp, %rax
    popq %rbp
    popq %rbx
    ret

    .globl xmm_across_call  # vector registers survive a runtime call
xmm_across_call:
    movq %rdi, %xmm9
    movl $39, %eax
    rtcall
    movq %xmm9, %rax
    ret

    .globl mmap_page        # mmap(0, 4096, RW, PRIVATE|ANON) and write a to it
mmap_page:
    pushq %rbx
    movq %rdi, %rbx
    xorl %edi, %edi
    movl $4096, %esi
    movl $3, %edx
    movl $0x22, %r10d
    movq $-1, %r8
    xorl %r9d, %r9d
    movl $9, %eax
    rtcall
    movq %rbx, %gs:(%eax)
    popq %rbx
    ret

    .globl segv_guard
segv_guard:
    movl $0x100, %eax
    movl $1, %gs:(%eax)
    ret

    .globl segv_code        # write into the read-only code
segv_code:
    leaq main(%rip), %rax
    movl $1, %gs:(%eax)
    ret

    .globl segv_top         # read the top guard
segv_top:
    movl $-16, %eax
    movq %gs:(%eax), %rax
    ret

    .globl ill
ill:
    ud2

    .globl div0
div0:
    xorl %ecx, %ecx
    movl $1, %eax
    cltd
    idivl %ecx
    ret

    .globl recurse
recurse:
    pushq %rax
    call recurse
    ret

    .globl rt_slot          # jump to a runtime-page slot that is not an entry
rt_slot:
    jmp rt_syscall + 0x40

    .globl bad_stack        # runtime call with %rsp in the low guard
bad_stack:
    movl $0x100, %esp
    orq %r14, %rsp
    movl $39, %eax
    jmp rt_syscall

    .globl spin
spin:
    jmp spin

    .globl spin_calls
spin_calls:
    movl $39, %eax
    rtcall
    jmp spin_calls
"""

# Writes `count` pseudo-random 8-byte values to pseudo-random window offsets (an
# LCG seeded by a0), and `count` more over its own stack, then returns: every
# store either lands in its own window or faults.
SCRIBBLER = r"""
    .globl main
main:
    xorl %eax, %eax
    ret

    .globl scribble
scribble:
    movq %rdi, %rax
    movq %rsi, %rcx
    movabsq $6364136223846793005, %r8
    movabsq $1442695040888963407, %r9
1:  imulq %r8, %rax
    addq %r9, %rax
    movq %rax, %rdx
    shrq $17, %rdx
    movq %rax, %gs:(%edx)
    decq %rcx
    jne 1b
    ret

    .globl smash            # overwrite its own stack, then return through it
smash:
    movq %rdi, %rax
    movl %esp, %edx
    movl $4096, %ecx
    movabsq $6364136223846793005, %r8
    movabsq $1442695040888963407, %r9
1:  imulq %r8, %rax
    addq %r9, %rax
    movq %rax, %gs:(%edx,%ecx,8)
    movq %rax, %gs:-8(%edx,%ecx,8)
    decl %ecx
    jne 1b
    movq %rax, %gs:(%edx)
    popq %r11
    andl $-32, %r11d
    orq %r14, %r11
    pushq %r11
    ret
"""


def basic():
    return assemble(BASIC, name="basic")


def scribbler():
    return assemble(SCRIBBLER, name="scribbler", isolation="code+data")
