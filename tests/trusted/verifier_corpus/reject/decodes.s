# mode: both
# case: byte invalid in 64-bit mode (push %es)
    .byte 0x06
# case: salc
    .byte 0xd6
# case: truncated instruction at the end of the code
    .byte 0x48, 0x8b
# case: 16 bytes of prefixes
    .fill 15, 1, 0x66
    nop
