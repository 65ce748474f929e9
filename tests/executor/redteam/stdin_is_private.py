# property: stdin is the test's own input (a memfd): all of it, then EOF
# expect: pass
# stdin: abc
# stdout: 3 0
import os
data = os.read(0, 1 << 20)
again = os.read(0, 1 << 20)
print(len(data), len(again))
