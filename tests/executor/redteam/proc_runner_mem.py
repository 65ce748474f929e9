# property: the runner's memory cannot be read or written through /proc/1/mem
# expect: pass
# stdout: denied
try:
    open("/proc/1/mem", "r+b")
    print("open")
except PermissionError:
    print("denied")
