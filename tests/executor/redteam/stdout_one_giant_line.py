# property: one line without a newline beyond the cap is output_limit
# expect: output_limit
import os
block = b"y" * (1 << 16)
while True:
    os.write(1, block)
