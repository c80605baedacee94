# mode: both
# case: mov to %gs
    mov gs, eax
# case: pop %fs
    pop fs
# case: lss
    lss esp, gs:[eax]
# case: mov to %ss
    mov ss, ax
# case: iretq (loads %cs and %ss)
    iretq
