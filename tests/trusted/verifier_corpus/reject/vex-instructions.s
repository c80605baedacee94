# mode: both
# level: x86-64-v3
# rule: allowed-instruction
# Refused whatever the addressing: implicit %ds:%rdi stores, VSIB, XOP, and VEX forms of
# extensions beyond x86-64-v3, even confined.
    .bundle_align_mode 5
# case: vmaskmovdqu with %gs + 0x67 (confined to gs:[edi], still refused)
    .byte 0x65, 0x67, 0xc5, 0xf9, 0xf7, 0xc1
# case: maskmovq with %gs + 0x67
    .byte 0x65, 0x67, 0x0f, 0xf7, 0xc1
# case: vpgatherqd with %gs + 0x67 (VSIB)
    vpgatherqd xmm0, dword ptr gs:[eax + ymm1*4], xmm2
# case: vgatherdps with a zero displacement only (VSIB, no base)
    vgatherdps ymm0, dword ptr gs:[ymm1*4 + 0], ymm2
# case: vpgatherdq with %rip-less 64-bit base (VSIB)
    vpgatherdq ymm0, qword ptr [rsp + xmm1*8], ymm2
# case: XOP vpperm with %gs
    vpperm xmm0, xmm1, xmmword ptr gs:[eax], xmm3
# case: XOP TBM blcfill (writes VEX.vvvv)
    blcfill rsp, rax
# case: FMA4 through memory
    vfmaddpd ymm0, ymm1, ymmword ptr gs:[eax], ymm3
# case: GFNI VEX form
    vgf2p8mulb ymm0, ymm1, ymm2
# case: VAES through memory
    vaesdec ymm0, ymm1, ymmword ptr gs:[eax]
# case: VEX-encoded opmask move to %rsp (AVX-512F)
    kmovq rsp, k1
# case: AMD clzero (implicit [rax] cache line)
    clzero
# case: AMD clzero with %gs + 0x67
    .byte 0x65, 0x67, 0x0f, 0x01, 0xfc
# case: AMD monitorx (implicit [rax])
    monitorx
# case: AMD mwaitx
    mwaitx
# case: xsaveopt with %gs + 0x67 (XSAVE: only xgetbv is allowed)
    xsaveopt gs:[eax]
# case: xsavec (XSAVE: only xgetbv is allowed)
    xsavec gs:[eax]
# case: xrstors (privileged XSAVE)
    xrstors gs:[eax]
# case: fxrstor (loads MXCSR and x87 state; not SSE)
    fxrstor gs:[eax]
# case: wrssq (CET shadow-stack write)
    wrssq qword ptr gs:[eax], rax
# case: incsspq (CET)
    incsspq rax
# case: cldemote
    cldemote byte ptr gs:[eax]
# case: clwb
    clwb byte ptr gs:[eax]
