# mode: both
# case: store through a 64-bit register without %gs
    mov qword ptr [rdi], rax
# case: %gs with 64-bit addressing (base + 4 GiB reach)
    mov qword ptr gs:[rdi], rax
# case: %gs absolute 64-bit moffs
    .byte 0x65, 0x48, 0xa1, 0, 0, 0, 0, 0, 0, 0, 0
# case: 32-bit addressing without %gs (absolute low 4 GiB)
    mov eax, dword ptr [edi]
# case: %gs on a %rip-relative operand (base + full address)
    mov rax, qword ptr gs:[rip + inside_data]
# case: %eip-relative without %gs (truncated absolute address)
    .byte 0x67, 0x48, 0x8b, 0x05, 0, 0, 0, 0
# case: %ds prefix on a %rip-relative operand
# rule: prefixes
    .byte 0x3e, 0x48, 0x8b, 0x05, 0, 0, 0, 0
# case: two segment prefixes (which one wins is decoder folklore)
# rule: prefixes
    .byte 0x2e, 0x65, 0x67, 0x8b, 0x00
# case: stack-relative access without %gs
    mov rax, qword ptr [rsp + 8]
# case: push from an unconfined address
    push qword ptr [rax]
# case: indirect call through unconfined memory (data mode)
# mode: data
    call qword ptr [rax]
# case: prefetch of a host address (times it: an ASLR side channel; iced-x86 reports no access)
    prefetcht0 byte ptr [rax]
# case: prefetchw of a host address
    prefetchw byte ptr [rdi]
# case: clflush of a host address
    clflush byte ptr [rax]
# case: prefetch with %gs but 64-bit addressing
    prefetchnta byte ptr gs:[rax]
# case: absolute %gs operand with 64-bit addressing (a 64-bit displacement)
    .byte 0x65, 0x8b, 0x04, 0x25, 0, 0x10, 0, 0
# case: %eip-relative (0x67 + rip form) without %gs
    .byte 0x67, 0x48, 0x8b, 0x05, 0, 0, 0, 0
# case: bit string on %rip with a register bit offset (touches operand + offset/8: anywhere)
    btr qword ptr [rip + inside_data], rbp
# case: bt with a 32-bit register bit offset on %rip (+- 256 MiB)
    bt dword ptr [rip + inside_data], eax
# case: 16-bit bts on %rip
    bts word ptr [rip + inside_data], cx
# case: bit string with a register bit offset through a 64-bit register
    btc qword ptr [rax], rdx
