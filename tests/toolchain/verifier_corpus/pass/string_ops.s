# mode: both
    .bundle_align_mode 5
# case: string instructions after their confinement groups
    .bundle_lock
    mov edi, edi
    or rdi, r14
    mov esi, esi
    or rsi, r14
    rep movsq
    .bundle_unlock
    .bundle_lock
    mov edi, edi
    or rdi, r14
    rep stosb
    .bundle_unlock
    .bundle_lock
    mov esi, esi
    or rsi, r14
    lodsb
    .bundle_unlock
    .bundle_lock
    mov edi, edi
    or rdi, r14
    repne scasb
    .bundle_unlock
    .bundle_lock
    mov edi, edi
    or rdi, r14
    mov esi, esi
    or rsi, r14
    repe cmpsb
    .bundle_unlock
