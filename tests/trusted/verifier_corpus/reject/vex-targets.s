# mode: both
# level: x86-64-v3
# rule: rip-target
# %rip-relative VEX, BMI and MOVBE operands: their target (after the immediate, for the
# forms that have one) must lie in the image.
    .bundle_align_mode 5
# case: vmovdqu load past the image end
    vmovdqu ymm0, ymmword ptr [rip + outside_image]
# case: vmaskmovps store past the image end
    vmaskmovps ymmword ptr [rip + outside_image], ymm1, ymm0
# case: vpmaskmovq load before the image
    vpmaskmovq ymm0, ymm1, ymmword ptr [rip - 0x2000]
# case: vpbroadcastd from far away
    vpbroadcastd ymm0, dword ptr [rip + 0x7fffffff]
# case: vcvtps2ph store with an immediate, past the image end
    vcvtps2ph xmmword ptr [rip + outside_image], ymm0, 0
# case: vpermq with an immediate, one byte before the image
    vpermq ymm0, ymmword ptr [rip - 0x100b], 0x1b
# case: bextr past the image end
    bextr rax, qword ptr [rip + outside_image], rcx
# case: rorx with an immediate past the image end
    rorx eax, dword ptr [rip + outside_image], 3
# case: movbe store past the image end
    movbe qword ptr [rip + outside_image], rax
