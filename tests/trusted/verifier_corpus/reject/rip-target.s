# mode: both
# case: %rip-relative load past the image end
    mov rax, qword ptr [rip + outside_image]
# case: %rip-relative store before the image start
    mov qword ptr [rip - 0x2000], rax
# case: %rip-relative far away
    mov qword ptr [rip + 0x7fffffff], rax
