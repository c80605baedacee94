# mode: both
    .bundle_align_mode 5
# case: unconfined rep movs
    rep movsq
# case: only %rdi confined
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi]
    rep movsq
    .bundle_unlock
# case: confinement in the wrong order
    .bundle_lock
    mov esi, esi
    lea rsi, [r14 + rsi]
    mov edi, edi
    lea rdi, [r14 + rdi]
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
    lea rdi, [r14 + rdi]
    mov esi, esi
    lea rsi, [r14 + rsi]
    .byte 0x65, 0x48, 0xa5
    .bundle_unlock
# case: address-size prefix (absolute %esi/%edi)
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi]
    mov esi, esi
    lea rsi, [r14 + rsi]
    .byte 0x67, 0x48, 0xa5
    .bundle_unlock
# case: a nop between confinement and the string instruction
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi]
    nop
    stosb
    .bundle_unlock
# case: the old flag-clobbering or form (one form per group: lea only)
    .bundle_lock
    mov edi, edi
    or rdi, r14
    rep stosq
    .bundle_unlock
# case: the old or form for %rsi
    .bundle_lock
    mov esi, esi
    or rsi, r14
    lodsb
    .bundle_unlock
# case: lea with a displacement (carries past the window's end)
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi + 8]
    stosb
    .bundle_unlock
# case: lea with a negative displacement (below the window base)
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi - 8]
    stosb
    .bundle_unlock
# case: lea with scale 2 (adds twice %edi)
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi*2]
    stosb
    .bundle_unlock
# case: lea adding another register
    .bundle_lock
    mov edi, edi
    lea rdi, [r15 + rdi]
    stosb
    .bundle_unlock
# case: lea from an unconfined register
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rsi]
    stosb
    .bundle_unlock
# case: lea with the 0x67 address-size prefix (the sum truncated to 32 bits)
    .bundle_lock
    mov edi, edi
    lea rdi, [r14d + edi]
    stosb
    .bundle_unlock
# case: lea into %edi (drops the window base)
    .bundle_lock
    mov edi, edi
    lea edi, [r14 + rdi]
    stosb
    .bundle_unlock
# case: lea with a segment prefix
    .bundle_lock
    mov edi, edi
    .byte 0x65, 0x49, 0x8d, 0x3c, 0x3e
    stosb
    .bundle_unlock
# case: lea without the zero-extension before it
    .bundle_lock
    lea rdi, [r14 + rdi]
    stosb
    .bundle_unlock
