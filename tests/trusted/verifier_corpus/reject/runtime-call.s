# mode: both
# case: syscall
    syscall
# case: int 0x80
    int 0x80
# case: sysenter
    sysenter
# case: int1
    .byte 0xf1
# case: call into a trapping slot of the runtime page
    call __tmebox_rt_other
# case: jump just past the runtime-call entry
    jmp __tmebox_rt_syscall + 1
