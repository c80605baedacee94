# mode: both
# level: x86-64-v3
# rule: stack-pointer
# x86-64-v3 forms that write a general-purpose register: BMI1/2 write their destination
# through ModRM.reg or (blsr/blsi/blsmsk, mulx's low half) through VEX.vvvv, and the AVX
# extracts and conversions write one through ModRM. Whichever field names %rsp or %r14,
# iced-x86's register-write info reports it, and the rules refuse it.
    .bundle_align_mode 5
# case: blsr writes %rsp through VEX.vvvv
    blsr rsp, rax
# case: blsi writes %esp through VEX.vvvv
    blsi esp, eax
# case: blsmsk writes %rsp through VEX.vvvv, from %rsp
    blsmsk rsp, rsp
# case: blsr writes %r14 through VEX.vvvv
# rule: base-register
    blsr r14, rax
# case: blsi writes %r14d through VEX.vvvv, from memory
# rule: base-register
    blsi r14d, dword ptr gs:[eax]
# case: mulx writes %rsp (high half, ModRM.reg)
    mulx rsp, rax, rcx
# case: mulx writes %rsp (low half, VEX.vvvv)
    mulx rax, rsp, rcx
# case: mulx writes %r14 (low half, VEX.vvvv)
# rule: base-register
    mulx rax, r14, rcx
# case: mulx writes %r14d (high half), from memory
# rule: base-register
    mulx r14d, eax, dword ptr gs:[ecx]
# case: shlx into %rsp
    shlx rsp, rax, rcx
# case: sarx into %r14
# rule: base-register
    sarx r14, rax, rcx
# case: shrx into %esp
    shrx esp, eax, ecx
# case: rorx into %rsp
    rorx rsp, rax, 7
# case: rorx into %r14
# rule: base-register
    rorx r14, rax, 0
# case: andn into %rsp
    andn rsp, rax, rcx
# case: bextr into %esp from memory
    bextr esp, dword ptr gs:[eax], ecx
# case: bzhi into %r14
# rule: base-register
    bzhi r14, rax, rcx
# case: pdep into %rsp
    pdep rsp, rax, rcx
# case: pext into %r14d
# rule: base-register
    pext r14d, eax, ecx
# case: vmovd into %esp
    vmovd esp, xmm0
# case: vmovq into %r14
# rule: base-register
    vmovq r14, xmm0
# case: vpextrq into %rsp
    vpextrq rsp, xmm0, 1
# case: vpextrd into %r14d
# rule: base-register
    vpextrd r14d, xmm0, 1
# case: vpextrw into %esp (the 2-byte c5 form)
    vpextrw esp, xmm0, 1
# case: vpextrb into %r14d
# rule: base-register
    vpextrb r14d, xmm0, 1
# case: vmovmskps into %esp
    vmovmskps esp, ymm0
# case: vpmovmskb into %r14d
# rule: base-register
    vpmovmskb r14d, ymm1
# case: vcvttsd2si into %rsp
    vcvttsd2si rsp, xmm0
# case: vcvtss2si into %r14
# rule: base-register
    vcvtss2si r14, xmm0
# case: lzcnt into %rsp
    lzcnt rsp, rax
# case: popcnt into %r14
# rule: base-register
    popcnt r14, rax
# case: movbe into %rsp
    movbe rsp, qword ptr gs:[eax]
# case: movbe into %r14d
# rule: base-register
    movbe r14d, dword ptr gs:[eax]
# case: crc32 into %r14d
# rule: base-register
    crc32 r14d, eax
# case: blsr esp then lea rsp, [rsp + r14] (BMI forms are not among the 32-bit write forms)
    .bundle_lock
    blsr esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: shlx esp then lea rsp, [rsp + r14] (BMI forms are not among the 32-bit write forms)
    .bundle_lock
    shlx esp, eax, ecx
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: andn esp then lea rsp, [rsp + r14]
    .bundle_lock
    andn esp, eax, ecx
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: rorx esp then lea rsp, [rsp + r14]
    .bundle_lock
    rorx esp, eax, 0
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: mulx esp (high half) then lea rsp, [rsp + r14]
    .bundle_lock
    mulx esp, eax, ecx
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: vmovd esp (VEX) then lea rsp, [rsp + r14]
    .bundle_lock
    vmovd esp, xmm0
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: vpextrd esp then lea rsp, [rsp + r14]
    .bundle_lock
    vpextrd esp, xmm1, 0
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: vcvttsd2si into %rsp with VEX.L=1 (ignored: still a write of %rsp)
    .byte 0xc4, 0xe1, 0xff, 0x2c, 0xe0
# case: vcvttsd2si into %r14 with VEX.L=1
# rule: base-register
    .byte 0xc4, 0x61, 0xff, 0x2c, 0xf0
# case: blsr into %rsp in the 3-byte form with VEX.W0 and R/X/B clear
    .byte 0xc4, 0x02, 0x58, 0xf3, 0xc8
