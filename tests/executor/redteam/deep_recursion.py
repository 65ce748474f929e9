# property: recursion 10**6 deep still reports its type, message and innermost frames
# expect: runtime_error
# stderr-has: RecursionError: maximum recursion depth exceeded
# time: 10
# memory: 1073741824
import sys
sys.setrecursionlimit(10 ** 6)

def f(n):
    return f(n + 1)

f(0)
