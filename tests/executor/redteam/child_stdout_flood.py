# property: a forked child flooding the inherited stdout is output_limit
# expect: output_limit
import os
pid = os.fork()
if pid == 0:
    block = b"c" * (1 << 16)
    while True:
        os.write(1, block)
os.waitpid(pid, 0)
