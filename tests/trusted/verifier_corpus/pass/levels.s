# mode: both
    .bundle_align_mode 5
# case: x86-64-v2: SSE3..SSE4.2, POPCNT, CRC32, CMPXCHG16B
# level: x86-64-v2
    popcnt rax, rcx
    crc32 eax, cl
    pshufb xmm0, xmm1
    pminud xmm0, xmm1
    pcmpistri xmm0, xmm1, 12
    haddps xmm0, xmmword ptr gs:[eax]
    lock cmpxchg16b xmmword ptr gs:[eax]
    lahf
    sahf
# case: x86-64-v3: AVX/AVX2 on registers and through %gs + 32-bit addressing
# level: x86-64-v3
    vaddps ymm0, ymm1, ymm2
    vmovdqu ymm0, ymmword ptr gs:[edi]
    vmovdqu ymmword ptr gs:[esp + 32], ymm15
    vpaddd ymm3, ymm4, ymmword ptr gs:[r8d + r9d*4 + 64]
    vpbroadcastd ymm1, dword ptr gs:[eax]
    vmaskmovps ymmword ptr gs:[ecx], ymm1, ymm2
    vpmaskmovd ymm0, ymm1, ymmword ptr gs:[edx]
    vbroadcasti128 ymm2, xmmword ptr gs:[esi]
    vmovntdq ymmword ptr gs:[edi], ymm0
    vpextrd eax, xmm0, 3
    vpmovmskb ecx, ymm1
    vmovq rdx, xmm2
    vzeroupper
    vzeroall
    vldmxcsr dword ptr gs:[esp]
    vmovdqu ymm0, ymmword ptr [rip + inside_data]
# case: x86-64-v3: FMA, F16C, BMI1, BMI2, LZCNT, MOVBE, xgetbv
# level: x86-64-v3
    vfmadd231pd ymm0, ymm1, ymm2
    vfmadd213sd xmm0, xmm1, qword ptr gs:[eax]
    vcvtph2ps ymm0, xmm1
    vcvtps2ph xmmword ptr gs:[eax], ymm1, 0
    andn rax, rbx, rcx
    bextr eax, dword ptr gs:[edi], ecx
    blsr rax, rcx
    bzhi rax, rcx, rdx
    mulx rdx, rax, rcx
    pdep rax, rbx, qword ptr gs:[eax]
    shlx rax, rbx, rcx
    sarx eax, ebx, ecx
    rorx rax, r14, 7
    lzcnt rax, rcx
    movbe eax, dword ptr gs:[edi]
    xgetbv
# case: a level admits everything of the levels below it
# level: x86-64-v3
    popcnt rax, rcx
    pcmpistri xmm0, xmm1, 12
    addps xmm0, xmm1
    tzcnt eax, ecx
