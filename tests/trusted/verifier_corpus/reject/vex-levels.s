# mode: both
# rule: cpu-level
# Every x86-64-v3 family below its level, including the memory forms and the BMI forms that
# write through VEX.vvvv: a CPU of the image's level would #UD (or, for lzcnt, run bsr).
    .bundle_align_mode 5
# case: vmaskmovps store at x86-64
    vmaskmovps ymmword ptr gs:[eax], ymm1, ymm0
# case: vpmaskmovq load at x86-64-v2
# level: x86-64-v2
    vpmaskmovq xmm0, xmm1, xmmword ptr gs:[eax]
# case: vpbroadcastb from memory at x86-64-v2
# level: x86-64-v2
    vpbroadcastb ymm0, byte ptr gs:[eax]
# case: vbroadcastss at x86-64
    vbroadcastss xmm0, dword ptr gs:[eax]
# case: vmovntdqa at x86-64-v2
# level: x86-64-v2
    vmovntdqa ymm0, ymmword ptr gs:[eax]
# case: vcvtps2ph to memory at x86-64-v2
# level: x86-64-v2
    vcvtps2ph xmmword ptr gs:[eax], ymm0, 0
# case: blsi (writes VEX.vvvv) at x86-64-v2
# level: x86-64-v2
    blsi rax, rcx
# case: mulx at x86-64
    mulx rdx, rax, rcx
# case: pdep from memory at x86-64-v2
# level: x86-64-v2
    pdep eax, ebx, dword ptr gs:[ecx]
# case: rorx at x86-64-v2
# level: x86-64-v2
    rorx eax, ecx, 3
# case: bzhi at x86-64
    bzhi eax, ecx, edx
# case: sarx at x86-64-v2
# level: x86-64-v2
    sarx rax, rbx, rcx
# case: vzeroupper at x86-64-v2
# level: x86-64-v2
    vzeroupper
# case: vzeroall at x86-64
    vzeroall
# case: vldmxcsr at x86-64-v2 (ldmxcsr is SSE: fine there)
# level: x86-64-v2
    vldmxcsr dword ptr gs:[esp]
# case: xgetbv at x86-64
    xgetbv
# case: lzcnt from memory at x86-64-v2
# level: x86-64-v2
    lzcnt eax, dword ptr gs:[eax]
# case: movbe store at x86-64
    movbe dword ptr gs:[eax], ecx
# case: 3-byte VEX form at x86-64-v2
# level: x86-64-v2
    {vex3} vpaddd xmm0, xmm1, xmm2
# case: VEX-encoded SSE4.1 form (vptest) at x86-64-v2
# level: x86-64-v2
    vptest xmm0, xmm1
# case: VEX-encoded SSE4.2 form (vpcmpestri) at x86-64-v2
# level: x86-64-v2
    vpcmpestri xmm0, xmmword ptr gs:[eax], 0
# case: crc32 at x86-64
    crc32 eax, dword ptr gs:[eax]
# case: cmpxchg16b at x86-64
    lock cmpxchg16b xmmword ptr gs:[eax]
# case: popcnt from memory at x86-64
    popcnt eax, dword ptr gs:[eax]
