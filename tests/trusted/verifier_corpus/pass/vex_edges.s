# mode: both
# level: x86-64-v3
# x86-64-v3 forms at the edges of what is confined; tests/trusted/test_escape_fuzz.py runs
# the memory forms on the CPU (they honour %gs and 0x67 there too).
    .bundle_align_mode 5
# case: masked loads and stores through %gs + 32-bit addressing
    vmaskmovps ymmword ptr gs:[eax], ymm1, ymm0
    vmaskmovpd ymm0, ymm1, ymmword ptr gs:[edi + 8]
    vpmaskmovd ymmword ptr gs:[ecx + edx*4], ymm1, ymm0
    vpmaskmovq xmm0, xmm1, xmmword ptr gs:[esp]
# case: masked store and load %rip-relative into the image
    vmaskmovps ymmword ptr [rip + inside_data], ymm1, ymm0
    vpmaskmovq ymm0, ymm1, ymmword ptr [rip + inside_data]
# case: broadcasts, non-temporal and unaligned loads, half-precision conversions via %gs
    vbroadcastss ymm0, dword ptr gs:[r15d + r14d*4]
    vbroadcastsd ymm0, qword ptr gs:[eax]
    vbroadcastf128 ymm0, xmmword ptr gs:[eax]
    vpbroadcastb ymm0, byte ptr gs:[esp]
    vpbroadcastw xmm0, word ptr gs:[eax - 1]
    vmovntdqa ymm0, ymmword ptr gs:[eax]
    vmovntps ymmword ptr gs:[eax], ymm0
    vlddqu ymm0, ymmword ptr gs:[esi]
    vcvtph2ps ymm0, xmmword ptr gs:[eax]
    vcvtps2ph xmmword ptr gs:[eax], ymm0, 4
# case: a 32-byte store whose 32-bit offset ends past 4 GiB (the guards stop it)
    .byte 0x65, 0x67, 0xc5, 0xfe, 0x7f, 0x04, 0x25, 0xf0, 0xff, 0xff, 0xff
    vmovdqu ymmword ptr gs:[eax - 16], ymm0
# case: BMI reading %rsp and %r14 (through VEX.vvvv and ModRM) is fine
    shlx rax, rbx, r14
    sarx rax, rsp, rcx
    bextr rax, rsp, r14
    andn rax, r14, rcx
    blsr r11, r14
    bzhi rax, rsp, rdx
    pdep rax, r14, rsp
    rorx rax, r14, 3
# case: BMI writing the scratch register %r11 through VEX.vvvv
    blsi r11, rax
    mulx rax, r11, rcx
# case: BMI forms through %gs + 32-bit addressing
    andn ecx, edx, dword ptr gs:[eax]
    bextr rcx, qword ptr gs:[eax], rdx
    mulx rcx, rbx, qword ptr gs:[eax]
    blsmsk rcx, qword ptr gs:[eax]
    shrx rcx, qword ptr gs:[r8d + r9d], rdx
    pext rcx, rdx, qword ptr [rip + inside_data]
# case: the 3-byte form of a 2-byte VEX instruction, and VEX.W where it is ignored
    {vex3} vmovdqu ymm0, ymmword ptr gs:[eax]
    .byte 0x65, 0x67, 0xc4, 0xe1, 0xfe, 0x6f, 0x00
# case: extracts and conversions into ordinary registers
    vmovd eax, xmm0
    vpextrq r11, xmm0, 1
    vpmovmskb r15d, ymm1
    vcvttsd2si r13, xmm0
    vpcmpestri xmm0, xmmword ptr gs:[eax], 0
# case: vzeroupper, vzeroall, xgetbv, vstmxcsr/vldmxcsr
    vzeroupper
    vzeroall
    xgetbv
    vstmxcsr dword ptr gs:[esp]
    vldmxcsr dword ptr gs:[esp]
# case: VEX.L=1 where L is ignored (scalar forms): the CPU runs the scalar instruction
    .byte 0xc5, 0xf6, 0x58, 0xc1
    .byte 0x65, 0x67, 0xc5, 0xfe, 0x10, 0x00
    .byte 0xc4, 0xe1, 0xff, 0x2c, 0xc0
    .byte 0xc5, 0xfd, 0x2e, 0xc1
