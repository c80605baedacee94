# mode: both
    .bundle_align_mode 5
# case: AVX at x86-64
    vaddps ymm0, ymm1, ymm2
# case: AVX at x86-64-v2
# level: x86-64-v2
    vmovdqu ymm0, ymmword ptr gs:[edi]
# case: a 128-bit VEX form at x86-64-v2 (VEX is AVX, whatever the width)
# level: x86-64-v2
    vpaddd xmm0, xmm1, xmm2
# case: BMI2 at x86-64-v2
# level: x86-64-v2
    shlx eax, ebx, ecx
# case: BMI1 andn at x86-64
    andn rax, rbx, rcx
# case: LZCNT at x86-64-v2 (a CPU without it runs bsr)
# level: x86-64-v2
    lzcnt rax, rcx
# case: MOVBE at x86-64-v2
# level: x86-64-v2
    movbe eax, dword ptr gs:[edi]
# case: xgetbv at x86-64-v2
# level: x86-64-v2
    xgetbv
# case: FMA at x86-64-v2
# level: x86-64-v2
    vfmadd231ps xmm0, xmm1, xmm2
# case: F16C at x86-64
    vcvtph2ps xmm0, xmm1
# case: POPCNT at x86-64
    popcnt rax, rcx
# case: CRC32 (SSE4.2) at x86-64
    crc32 eax, cl
# case: SSSE3 at x86-64
    pshufb xmm0, xmm1
# case: SSE4.1 through memory at x86-64
    pminud xmm0, xmmword ptr gs:[eax]
# case: SSE3 at x86-64
    haddps xmm0, xmm1
# case: CMPXCHG16B at x86-64
    lock cmpxchg16b xmmword ptr gs:[eax]
# case: lahf at x86-64 (64-bit mode has it from LAHF_LM, x86-64-v2, on; iced names no feature)
    lahf
# case: sahf at x86-64
    sahf
