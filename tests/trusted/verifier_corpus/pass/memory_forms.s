# mode: both
    .bundle_align_mode 5
# case: %gs + 32-bit addressing, every base/index shape
    mov rax, qword ptr gs:[edi]
    mov qword ptr gs:[esp + 8], rax
    mov eax, dword ptr gs:[r8d + r9d*4 + 16]
    mov byte ptr gs:[ebp - 1], 7
    add dword ptr gs:[eax*8], 1
    addr32 mov rax, qword ptr gs:[0x10]
    movdqu xmm0, xmmword ptr gs:[eax]
    lock xadd qword ptr gs:[ecx], rdx
    cmp qword ptr gs:[esp], 0
    push qword ptr gs:[eax]
    pop qword ptr gs:[eax]
    fld qword ptr gs:[esi]
    prefetcht0 byte ptr gs:[edi + 64]
    clflush byte ptr gs:[edi]
# case: bit strings with a register bit offset on %gs + 32-bit (the CPU wraps offset/8 too)
    btr qword ptr gs:[eax], rbp
    bts dword ptr gs:[esp + 8], ecx
    bt word ptr gs:[r8d], ax
    btc qword ptr gs:[edi], 63
# case: bit strings with an immediate bit offset stay within their operand, %rip too
    bt qword ptr [rip + inside_data], 5
# case: %rip-relative inside the image, lea and nop keep any operand
    mov rax, qword ptr [rip + inside_data]
    lea rax, [rip + outside_image]
    lea rax, [rdi + rsi*8 + 4]
    nop word ptr cs:[rax + rax]
    nop dword ptr [rax]
# case: stack: push/pop/call, and with a negative immediate
    push rbp
    push rsp
    pop rbp
    and rsp, -16
    pushfq
    call __tmebox_rt_syscall
