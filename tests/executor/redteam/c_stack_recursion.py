# property: a C-level recursion (nested repr) is a runtime error, not a sandbox error
# expect: runtime_error
# time: 4
# (0.4 s of CPU; at the default 1 s limit a host at load 10 let the 2 s wall clock run out first: a timeout)
import sys
sys.setrecursionlimit(10 ** 6)
a = []
for _ in range(10 ** 5):
    a = [a]
print(a)
