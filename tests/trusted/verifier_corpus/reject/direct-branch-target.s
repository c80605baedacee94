# mode: both
    .bundle_align_mode 5
# case: jump into the middle of an instruction
    jmp 1f + 3
1:  mov rax, 0x050f
# case: jump into the middle of a string confinement group
    jmp 1f
    .bundle_lock
    mov edi, edi
1:  lea rdi, [r14 + rdi]
    stosb
    .bundle_unlock
# case: jump out of the image
    jmp outside_image
# case: jump into the middle of a masking group
# mode: code+data
    jmp 1f
    .bundle_lock
    and r11d, -32
1:  or r11, r14
    jmp r11
    .bundle_unlock
# case: jump straight to the masked jmp
# mode: code+data
    jmp 1f
    .bundle_lock
    and r11d, -32
    or r11, r14
1:  jmp r11
    .bundle_unlock
