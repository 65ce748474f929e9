# property: interleaved floods on stdout and stderr are output_limit
# expect: output_limit
import os
block = b"z" * (1 << 15)
while True:
    os.write(1, block)
    os.write(2, block)
