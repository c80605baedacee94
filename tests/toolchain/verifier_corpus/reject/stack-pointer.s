# mode: both
    .bundle_align_mode 5
# case: large rsp adjustment without re-confinement
    sub rsp, 0x100000
# case: small rsp adjustment (repeatable walk past the guard)
    add rsp, 8
# case: rsp loaded from memory
    mov rsp, qword ptr gs:[edi]
# case: rsp from a register
    mov rsp, rax
# case: 32-bit write without the or
    mov esp, eax
    nop
# case: 32-bit write as the last instruction
    mov esp, eax
# case: or %r14, %rsp alone
    or rsp, r14
# case: pop %rsp
    pop rsp
# case: xchg with %rsp
    xchg rsp, rax
# case: 16-bit write to %sp
    mov sp, ax
# case: and with a positive immediate (clears the window bits)
    and rsp, 0xfff
