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
# case: AVX (VEX)
    vaddps ymm0, ymm1, ymm2
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
