# property: PTRACE_TRACEME is denied too
# expect: pass
# stdout: denied
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("denied" if libc.ptrace(0, 0, 0, 0) == -1 else "traced")
