# mode: code+data
# case: plain ret
    ret
