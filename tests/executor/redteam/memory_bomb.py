# property: one huge allocation is oom
# expect: oom
# stderr-has: MemoryError
x = bytearray(1 << 31)
