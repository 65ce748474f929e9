# property: the runner's control pipes cannot be reopened through /proc/1/fd
# expect: pass
# stdout: denied
import os
try:
    os.listdir("/proc/1/fd")
    print("open")
except PermissionError:
    print("denied")
