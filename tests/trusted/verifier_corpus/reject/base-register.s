# mode: both
# case: 32-bit write to %r14d
    mov r14d, eax
# case: pop %r14
    pop r14
# case: xchg with %r14
    xchg r14, rax
# case: byte write to %r14b
    mov r14b, 1
# case: cmpxchg into %r14
    cmpxchg r14, rcx
# case: add to %r14
    add r14, 0x1000
# case: lea into %r14
    lea r14, [rip + inside_data]
