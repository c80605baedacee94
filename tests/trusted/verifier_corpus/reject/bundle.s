# mode: code+data
# case: instruction crossing a bundle boundary
    .fill 30, 1, 0x90
    mov rax, 0x1122334455667788
# case: masking group crossing a bundle boundary
    .fill 28, 1, 0x90
    and r11d, -32
    or r11, r14
    jmp r11
