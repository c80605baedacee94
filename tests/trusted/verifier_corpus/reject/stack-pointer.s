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
# case: pop %rsp, the 8f /0 form (found by the escape fuzzer)
    .byte 0x8f, 0xc4
# case: pop %rsp, 8f /0 with REX.W
    .byte 0x48, 0x8f, 0xc4
# case: pop %rsp, 8f /0 with a redundant REX
    .byte 0x40, 0x8f, 0xc4
# case: xchg with %rsp
    xchg rsp, rax
# case: 16-bit write to %sp
    mov sp, ax
# case: and with a positive immediate (clears the window bits)
    and rsp, 0xfff
# case: 32-bit write followed by the old flag-clobbering or
    .bundle_lock
    mov esp, eax
    or rsp, r14
    .bundle_unlock
# case: the old rewritten leave
    .bundle_lock
    mov esp, ebp
    or rsp, r14
    .bundle_unlock
    pop rbp
# case: lea rsp alone (a full %rsp plus the base leaves the window)
    lea rsp, [rsp + r14]
# case: lea rsp with a displacement
    .bundle_lock
    mov esp, eax
    lea rsp, [rsp + r14 + 8]
    .bundle_unlock
# case: lea rsp with scale 2
    .bundle_lock
    mov esp, eax
    lea rsp, [rsp + r14*2]
    .bundle_unlock
# case: lea rsp adding another register
    .bundle_lock
    mov esp, eax
    lea rsp, [rsp + r15]
    .bundle_unlock
# case: lea rsp with the 0x67 address-size prefix
    .bundle_lock
    mov esp, eax
    lea rsp, [esp + r14d]
    .bundle_unlock
# case: lea rsp with a segment prefix
    .bundle_lock
    mov esp, eax
    .byte 0x65, 0x4a, 0x8d, 0x24, 0x34
    .bundle_unlock
