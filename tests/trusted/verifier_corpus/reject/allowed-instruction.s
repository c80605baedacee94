# mode: both
# case: wrgsbase moves the window
    wrgsbase rax
# case: wrfsbase
    wrfsbase rax
# case: rdfsbase leaks the host thread pointer
    rdfsbase rax
# case: wrpkru
    wrpkru
# case: xrstor can load PKRU
    xrstor gs:[eax]
# case: far jump through memory
    jmp fword ptr gs:[eax]
# case: far return
    retf
# case: hlt
    hlt
# case: port I/O
    out dx, al
# case: cli
    cli
# case: lgdt
    lgdt gs:[eax]
# case: enter
    enter 16, 0
# case: leave (64-bit rsp load)
    leave
# case: popfq (sets TF/AC)
    popfq
# case: ret imm16 (moves rsp by up to 64 KiB)
# mode: data
    ret 0xfff0
# case: xlat (implicit [rbx+al])
    xlatb
# case: maskmovdqu (implicit %ds:%rdi)
    maskmovdqu xmm0, xmm1
# case: AVX-512 (EVEX)
    vpaddd zmm0, zmm1, zmm2
# case: transactional memory
    xbegin 1f
1:
# case: operand-size prefix on a branch (16-bit on AMD)
# rule: decodes
    .byte 0x66, 0xe9, 0, 0, 0, 0
# case: monitor (implicit [rax])
    monitor
# case: AVX2 gather (VSIB: one address per vector lane)
# level: x86-64-v3
    vpgatherdd ymm0, dword ptr gs:[eax + ymm1*4], ymm2
# case: AVX2 gather with a 64-bit base and no segment
# level: x86-64-v3
    vgatherqpd ymm0, qword ptr [rax + ymm1*8], ymm2
# case: AVX2 gather with an xmm index
# level: x86-64-v3
    vpgatherdq xmm0, qword ptr gs:[eax + xmm1*8], xmm2
# case: vmaskmovdqu (implicit %ds:%rdi)
# level: x86-64-v3
    vmaskmovdqu xmm0, xmm1
# case: AVX-512 at x86-64-v3
# level: x86-64-v3
    vpaddd zmm0, zmm1, zmm2
# case: AVX-512VL (EVEX) on ymm at x86-64-v3
# level: x86-64-v3
    vpaddd ymm0{k1}, ymm1, ymm2
# case: opmask instruction (VEX-encoded, AVX-512F)
# level: x86-64-v3
    kmovw k1, eax
# case: AVX-VNNI (VEX-encoded, beyond v3; capstone does not know it)
# level: x86-64-v3
# rule: decodes
    {vex} vpdpbusd ymm0, ymm1, ymm2
# case: VAES (VEX-encoded, beyond v3)
# level: x86-64-v3
    vaesenc ymm0, ymm1, ymm2
# case: VPCLMULQDQ (VEX-encoded, beyond v3)
# level: x86-64-v3
    vpclmulqdq ymm0, ymm1, ymm2, 0
# case: AES-NI (legacy, in no level)
# level: x86-64-v3
    aesenc xmm0, xmm1
# case: PCLMULQDQ (legacy, in no level)
# level: x86-64-v3
    pclmulqdq xmm0, xmm1, 0
# case: SHA (legacy, in no level)
# level: x86-64-v3
    sha256rnds2 xmm1, xmm2
# case: ADX adcx (in no level)
# level: x86-64-v3
    adcx rax, rcx
# case: SSE4a extrq (AMD only)
# level: x86-64-v3
    extrq xmm0, 4, 2
# case: XOP (AMD only)
# level: x86-64-v3
    vpcmov xmm0, xmm1, xmm2, xmm3
# case: FMA4 (AMD only, VEX-encoded)
# level: x86-64-v3
    vfmaddps xmm0, xmm1, xmm2, xmm3
# case: xsave at x86-64-v3 (xgetbv is the only XSAVE instruction allowed)
# level: x86-64-v3
    xsave [eax]
# case: xrstor at x86-64-v3 (loads PKRU)
# level: x86-64-v3
    xrstor gs:[eax]
# case: xsetbv at x86-64-v3
# level: x86-64-v3
    xsetbv
# case: AMX tile load (VEX-encoded; capstone does not know it)
# level: x86-64-v3
# rule: decodes
    tileloadd tmm0, [eax + ecx*1]
