# mode: both
    .bundle_align_mode 5
# case: 32-bit writes to %esp re-confined by lea rsp, [rsp + r14]
    .bundle_lock
    sub esp, 0x100000
    lea rsp, [rsp + r14]
    .bundle_unlock
    .bundle_lock
    mov esp, ebp
    lea rsp, [rsp + r14]
    .bundle_unlock
    .bundle_lock
    mov esp, dword ptr gs:[edi + 8]
    lea rsp, [rsp + r14]
    .bundle_unlock
    .bundle_lock
    lea esp, [rbp - 16]
    lea rsp, [rsp + r14]
    .bundle_unlock
# case: the rewritten leave
    .bundle_lock
    mov esp, ebp
    lea rsp, [rsp + r14]
    .bundle_unlock
    pop rbp
