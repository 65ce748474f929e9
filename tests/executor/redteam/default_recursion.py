# property: recursion beyond the default limit reports a RecursionError with its frames
# expect: runtime_error
# stderr-has: in f
def f(n):
    return f(n + 1)

f(0)
