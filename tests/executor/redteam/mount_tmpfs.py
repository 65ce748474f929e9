# property: mount is denied
# expect: pass
# stdout: denied
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("denied" if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == -1 else "mounted")
