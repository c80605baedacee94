# mode: both
    .bundle_align_mode 5
# case: string instructions after their confinement groups
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi]
    mov esi, esi
    lea rsi, [r14 + rsi]
    rep movsq
    .bundle_unlock
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi]
    rep stosb
    .bundle_unlock
    .bundle_lock
    mov esi, esi
    lea rsi, [r14 + rsi]
    lodsb
    .bundle_unlock
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi]
    repne scasb
    .bundle_unlock
    .bundle_lock
    mov edi, edi
    lea rdi, [r14 + rdi]
    mov esi, esi
    lea rsi, [r14 + rsi]
    repe cmpsb
    .bundle_unlock
# case: the confining lea with base and index the other way round
    .bundle_lock
    mov edi, edi
    lea rdi, [rdi + r14]
    mov esi, esi
    lea rsi, [rsi + r14]
    rep movsb
    .bundle_unlock
