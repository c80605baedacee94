# mode: code+data
    .bundle_align_mode 5
# case: plain ret
    ret
# case: the old return: a masked jump loses nothing, but ret after pop is unmasked
    pop r11
    ret
# case: push r11; ret without the mask
    .bundle_lock
    push r11
    ret
    .bundle_unlock
# case: mask without the base
    .bundle_lock
    and r11d, -32
    push r11
    ret
    .bundle_unlock
# case: masked, but another register pushed
    .bundle_lock
    and r11d, -32
    or r11, r14
    push rax
    ret
    .bundle_unlock
# case: the masked push, then something that rewrites the slot before ret
    .bundle_lock
    and r11d, -32
    or r11, r14
    push r11
    mov dword ptr gs:[esp], eax
    ret
    .bundle_unlock
# case: mask to 16 bytes
    .bundle_lock
    and r11d, -16
    or r11, r14
    push r11
    ret
    .bundle_unlock
# case: a jump onto the push, past the mask
# rule: direct-branch-target
    jmp 1f
    .bundle_lock
    and r11d, -32
    or r11, r14
1:  push r11
    ret
    .bundle_unlock
# case: ret with a 16-bit operand size (AMD truncates the target)
# rule: decodes
    .bundle_lock
    and r11d, -32
    or r11, r14
    push r11
    .byte 0x66, 0xc3
    .bundle_unlock
