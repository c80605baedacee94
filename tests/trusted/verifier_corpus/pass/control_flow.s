# mode: code+data
    .bundle_align_mode 5
# case: the code+data forms: padded call groups, masked indirect branches, the
#   old (masked jmp) and the new (masked push; ret) return
start:
    test eax, eax
    je start
    jmp later
    .bundle_lock
    .byte 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
    .byte 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
    .byte 0x0f, 0x1f, 0x44, 0, 0
    call __tmebox_rt_syscall
    .bundle_unlock
later:
    mov r11, qword ptr gs:[eax]
    .bundle_lock
    .byte 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
    .byte 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
    and r11d, -32
    or r11, r14
    call r11
    .bundle_unlock
    pop r11
    .bundle_lock
    and r11d, -32
    or r11, r14
    jmp r11
    .bundle_unlock
    .bundle_lock
    pop r11
    and r11d, -32
    or r11, r14
    push r11
    ret
    .bundle_unlock
    .bundle_lock
    and r11d, -32
    or r11, r14
    push r11
    ret
    .bundle_unlock
    jmp __tmebox_rt_exit
1:  loop 1b
    jrcxz 1b
# case: data mode keeps ret and indirect branches
# mode: data
    call qword ptr [rip + inside_data]
    jmp rax
    call qword ptr gs:[eax]
    ret
# case: the mask with a 32-bit immediate encoding
# mode: code+data
    .bundle_align_mode 5
    .bundle_lock
    .byte 0x41, 0x81, 0xe3, 0xe0, 0xff, 0xff, 0xff
    .byte 0x4d, 0x0b, 0xde
    jmp r11
    .bundle_unlock
