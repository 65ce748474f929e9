# property: a C-level recursion (nested repr) is a runtime error, not a sandbox error
# expect: runtime_error
import sys
sys.setrecursionlimit(10 ** 6)
a = []
for _ in range(10 ** 5):
    a = [a]
print(a)
