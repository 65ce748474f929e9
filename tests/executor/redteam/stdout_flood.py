# property: 100 MB on stdout is output_limit (the child is killed at the cap)
# expect: output_limit
import sys
chunk = "x" * (1 << 20)
for _ in range(100):
    sys.stdout.write(chunk)
