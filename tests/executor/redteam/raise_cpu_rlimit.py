# property: the CPU rlimit's hard limit cannot be raised
# expect: pass
# stdout: denied
import resource
try:
    resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("raised")
except (ValueError, OSError):
    print("denied")
