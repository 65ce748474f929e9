# property: 100 MB on stderr keeps only a bounded tail
# expect: pass
# stderr-max: 4096
import os
block = b"e" * (1 << 16)
for _ in range(1600):
    os.write(2, block)
