# property: writing /proc/sysrq-trigger is denied
# expect: pass
# stdout: denied
try:
    open("/proc/sysrq-trigger", "w").write("b")
    print("written")
except OSError:
    print("denied")
