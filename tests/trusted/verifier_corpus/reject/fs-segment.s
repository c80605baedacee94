# mode: both
# case: %fs:0 (musl's thread pointer)
    mov rax, qword ptr fs:[0]
# case: %fs with 32-bit addressing
    mov rax, qword ptr fs:[eax]
# case: %fs store
    mov dword ptr fs:[0x28], eax
