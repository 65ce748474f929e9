# property: reboot is denied
# expect: pass
# stdout: denied
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("denied" if libc.reboot(0x4321FEDC) == -1 else "rebooted")
