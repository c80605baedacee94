# mode: code+data
    .bundle_align_mode 5
# case: unmasked indirect jump
    jmp rax
# case: indirect call through memory
    call qword ptr gs:[eax]
# case: jmp *%r11 without the mask
    jmp r11
# case: mask to 16 bytes
    .bundle_lock
    and r11d, -16
    or r11, r14
    jmp r11
    .bundle_unlock
# case: mask without the base
    .bundle_lock
    and r11d, -32
    jmp r11
    .bundle_unlock
