# mode: both
    .bundle_align_mode 5
# case: padding and traps
    int3
    ud2
    nop
    xchg ax, ax
    .byte 0x0f, 0x1f, 0x80, 0, 0, 0, 0
    .byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
    endbr64
# case: what gcc and musl emit besides plain integer code
    cpuid
    rdtsc
    pause
    lfence
    mfence
    sfence
    cld
    std
    bsf rax, rcx
    tzcnt eax, ecx
    cmova rax, rcx
    sete al
    imul rax, rcx, 12
    div rcx
    cqo
    bswap rax
    xchg rax, rcx
# case: SSE, SSE2, MMX, x87
    addps xmm0, xmm1
    mulsd xmm2, qword ptr gs:[eax + 8]
    cvtsi2sd xmm0, rax
    paddb mm0, mm1
    emms
    ldmxcsr dword ptr gs:[esp]
    stmxcsr dword ptr gs:[esp]
    fldz
    faddp st(1), st
    fnstcw word ptr gs:[esp]
    fldcw word ptr gs:[esp]
    fistp qword ptr gs:[esp]
