# mode: both
# level: x86-64-v3
# rule: memory-operand
# x86-64-v3 memory forms: the masked loads and stores, broadcasts, non-temporal loads, the
# half-precision conversions and the BMI/MOVBE/CRC32/LZCNT forms address memory through
# ModRM like any other instruction; only %gs with 32-bit addressing (or %rip) confines them.
# tests/trusted/test_escape_fuzz.py runs their %gs + 0x67 forms on the CPU.
    .bundle_align_mode 5
# case: vmaskmovps store through a 64-bit register
    vmaskmovps ymmword ptr [rax], ymm1, ymm0
# case: vmaskmovpd load through %rdi
    vmaskmovpd ymm0, ymm1, ymmword ptr [rdi]
# case: vpmaskmovd store with %gs but 64-bit addressing
    vpmaskmovd ymmword ptr gs:[rdi], ymm1, ymm0
# case: vpmaskmovq load with 32-bit addressing but no %gs
    vpmaskmovq ymm0, ymm1, ymmword ptr [eax]
# case: vbroadcastss from the stack without %gs
    vbroadcastss ymm0, dword ptr [rsp]
# case: vpbroadcastq through base + index
    vpbroadcastq ymm0, qword ptr [rax + rcx*8]
# case: vpbroadcastb with %gs and a 64-bit base
    vpbroadcastb ymm0, byte ptr gs:[rax]
# case: vbroadcasti128 with %gs and a 64-bit base
    vbroadcasti128 ymm0, xmmword ptr gs:[rax + 16]
# case: vmovntdqa (non-temporal load) through %rdi
    vmovntdqa ymm0, ymmword ptr [rdi]
# case: vmovntdq (non-temporal store) through %rdi
    vmovntdq ymmword ptr [rdi], ymm0
# case: vlddqu through %rsi
    vlddqu ymm0, ymmword ptr [rsi]
# case: vcvtph2ps from memory without %gs
    vcvtph2ps ymm0, xmmword ptr [rax]
# case: vcvtps2ph to memory without %gs
    vcvtps2ph xmmword ptr [rdi], ymm0, 0
# case: vpermq from memory without %gs
    vpermq ymm0, ymmword ptr [rax], 0x1b
# case: vextracti128 to memory without %gs
    vextracti128 xmmword ptr [rdi], ymm1, 1
# case: vpextrb to memory without %gs
    vpextrb byte ptr [rdi], xmm0, 3
# case: vmovq store without %gs
    vmovq qword ptr [rax], xmm0
# case: vldmxcsr from a host address
    vldmxcsr dword ptr [rax]
# case: vstmxcsr to a host address
    vstmxcsr dword ptr [rdi]
# case: bextr from memory without %gs
    bextr rax, qword ptr [rcx], rdx
# case: bzhi from memory without %gs
    bzhi eax, dword ptr [rcx], edx
# case: shlx from memory without %gs
    shlx rax, qword ptr [rcx], rdx
# case: sarx from memory with %gs, 64-bit addressing
    sarx rax, qword ptr gs:[rcx], rdx
# case: shrx from memory, 32-bit addressing without %gs
    shrx eax, dword ptr [ecx], edx
# case: rorx from memory without %gs
    rorx rax, qword ptr [rcx], 3
# case: mulx from memory without %gs
    mulx rax, rbx, qword ptr [rcx]
# case: pdep from memory without %gs
    pdep rax, rbx, qword ptr [rcx]
# case: pext from memory without %gs
    pext eax, ebx, dword ptr [rcx]
# case: andn from memory without %gs
    andn rax, rbx, qword ptr [rax]
# case: blsr from memory without %gs (group 17, /1)
    blsr rax, qword ptr [rdi]
# case: blsi from memory without %gs (group 17, /3)
    blsi eax, dword ptr [rdi]
# case: blsmsk from memory without %gs (group 17, /2)
    blsmsk rax, qword ptr [rdi]
# case: movbe load without %gs
    movbe eax, dword ptr [rdi]
# case: movbe store without %gs
    movbe qword ptr [rdi], rax
# case: crc32 from memory without %gs
    crc32 eax, byte ptr [rax]
# case: lzcnt from memory without %gs
    lzcnt rax, qword ptr [rax]
# case: tzcnt from memory without %gs
# level: x86-64
    tzcnt eax, dword ptr [rax]
# case: popcnt from memory without %gs
    popcnt rax, qword ptr [rax]
# case: cmpxchg16b without %gs at x86-64-v2
# level: x86-64-v2
    lock cmpxchg16b xmmword ptr [rax]
# case: %gs on a %rip-relative VEX operand (base + full address)
    vmovdqu ymm0, ymmword ptr gs:[rip + inside_data]
# case: %eip-relative VEX operand without %gs (a truncated absolute address)
    .byte 0x67, 0xc5, 0xfe, 0x6f, 0x05, 0, 0, 0, 0
# case: %gs + %eip-relative VEX operand (confined, but not a form the rewriter emits)
    .byte 0x65, 0x67, 0xc5, 0xfe, 0x6f, 0x05, 0, 0, 0, 0
# case: absolute %gs VEX operand without 0x67 (a sign-extended disp32: base - 2 GiB)
    .byte 0x65, 0xc5, 0xfe, 0x6f, 0x04, 0x25, 0x00, 0x00, 0x00, 0x80
# case: %gs with a 64-bit %rsp base on a 32-byte store
    vmovdqu ymmword ptr gs:[rsp + 32], ymm0
# case: 3-byte VEX form through a 64-bit register
    {vex3} vmovdqu ymm0, ymmword ptr [rax]
# case: %fs on a VEX load
# rule: fs-segment
    vmovdqu ymm0, ymmword ptr fs:[eax]
# case: %fs on a masked store
# rule: fs-segment
    vmaskmovps ymmword ptr fs:[eax], ymm1, ymm0
# case: %fs on a BMI load
# rule: fs-segment
    bextr eax, dword ptr fs:[ecx], edx
