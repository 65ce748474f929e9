# property: unshare (a fresh user namespace) is denied
# expect: pass
# stdout: denied
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
print("denied" if libc.unshare(CLONE_NEWUSER) == -1 else "unshared")
