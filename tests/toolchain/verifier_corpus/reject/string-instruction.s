# mode: both
    .bundle_align_mode 5
# case: unconfined rep movs
    rep movsq
# case: only %rdi confined
    .bundle_lock
    mov edi, edi
    or rdi, r14
    rep movsq
    .bundle_unlock
# case: confinement in the wrong order
    .bundle_lock
    mov esi, esi
    or rsi, r14
    mov edi, edi
    or rdi, r14
    movsb
    .bundle_unlock
# case: confinement with another register
    .bundle_lock
    mov edi, edi
    or rdi, r15
    stosb
    .bundle_unlock
# case: %gs override on the source (base + full address)
    .bundle_lock
    mov edi, edi
    or rdi, r14
    mov esi, esi
    or rsi, r14
    .byte 0x65, 0x48, 0xa5
    .bundle_unlock
# case: address-size prefix (absolute %esi/%edi)
    .bundle_lock
    mov edi, edi
    or rdi, r14
    mov esi, esi
    or rsi, r14
    .byte 0x67, 0x48, 0xa5
    .bundle_unlock
# case: a nop between confinement and the string instruction
    .bundle_lock
    mov edi, edi
    or rdi, r14
    nop
    stosb
    .bundle_unlock
