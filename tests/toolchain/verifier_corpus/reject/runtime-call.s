# mode: both
# case: syscall
    syscall
# case: int 0x80
    int 0x80
# case: sysenter
    sysenter
# case: int1
    .byte 0xf1
