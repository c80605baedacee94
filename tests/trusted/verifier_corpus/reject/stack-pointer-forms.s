# mode: both
# rule: stack-pointer
# Finding 1 of issue 10: a 32-bit %esp write that may not happen. bsf/bsr with a zero
# source, cmpxchg with a failing compare (and the others here) leave %rsp unwritten, and
# the lea after them adds the window base a second time: %rsp walks to any address.
    .bundle_align_mode 5
# case: bsf with a zero source, then lea rsp, [rsp + r14]
    .bundle_lock
    bsf esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: bsr with a zero source, then lea rsp, [rsp + r14]
    .bundle_lock
    bsr esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: bsf from memory, then lea rsp, [rsp + r14]
    .bundle_lock
    bsf esp, dword ptr gs:[eax]
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: cmpxchg into esp (failing compare), then lea rsp, [rsp + r14]
    .bundle_lock
    cmpxchg esp, ecx
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: cmovz into esp (condition false), then lea rsp, [rsp + r14]
    .bundle_lock
    cmovz esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: xchg esp with a register, then lea rsp, [rsp + r14]
    .bundle_lock
    xchg esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: xadd into esp, then lea rsp, [rsp + r14]
    .bundle_lock
    xadd esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: shl esp by cl (cl may be 0), then lea rsp, [rsp + r14]
    .bundle_lock
    shl esp, cl
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: shr esp by an immediate, then lea rsp, [rsp + r14]
    .bundle_lock
    shr esp, 3
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: rol esp, then lea rsp, [rsp + r14]
    .bundle_lock
    rol esp, 1
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: imul into esp, then lea rsp, [rsp + r14]
    .bundle_lock
    imul esp, eax, 3
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: popcnt into esp, then lea rsp, [rsp + r14]
# level: x86-64-v3
    .bundle_lock
    popcnt esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: lzcnt into esp, then lea rsp, [rsp + r14]
# level: x86-64-v3
    .bundle_lock
    lzcnt esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: tzcnt into esp, then lea rsp, [rsp + r14]
    .bundle_lock
    tzcnt esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: bswap esp, then lea rsp, [rsp + r14]
    .bundle_lock
    bswap esp
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: movzx into esp, then lea rsp, [rsp + r14]
    .bundle_lock
    movzx esp, ax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: neg esp, then lea rsp, [rsp + r14]
    .bundle_lock
    neg esp
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: not esp, then lea rsp, [rsp + r14]
    .bundle_lock
    not esp
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: inc esp, then lea rsp, [rsp + r14]
    .bundle_lock
    inc esp
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: adc esp, then lea rsp, [rsp + r14]
    .bundle_lock
    adc esp, 1
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: sbb esp, then lea rsp, [rsp + r14]
    .bundle_lock
    sbb esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: crc32 into esp, then lea rsp, [rsp + r14]
# level: x86-64-v3
    .bundle_lock
    crc32 esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: movd esp from xmm, then lea rsp, [rsp + r14]
    .bundle_lock
    movd esp, xmm0
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: pop into esp's 64-bit register then lea, then lea rsp, [rsp + r14]
    .bundle_lock
    pop rsp
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: 16-bit write to sp then lea, then lea rsp, [rsp + r14]
    .bundle_lock
    mov sp, ax
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: the bsf walk of issue 10 (a loop adding the base each time)
1:  .bundle_lock
    bsf esp, eax
    lea rsp, [rsp + r14]
    .bundle_unlock
    jmp 1b
