# property: the runner's environment is not readable through /proc/1/environ
# expect: pass
# stdout: denied
try:
    print(open("/proc/1/environ", "rb").read())
except PermissionError:
    print("denied")
