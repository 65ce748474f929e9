# property: ptrace is denied (seccomp): the runner cannot be attached
# expect: pass
# stdout: denied
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
print("denied" if libc.ptrace(PTRACE_ATTACH, 1, 0, 0) == -1 else "attached")
