# property: the test holds no capabilities
# expect: pass
# stdout: 0000000000000000
status = open("/proc/self/status").read()
print(status.split("CapEff:")[1].split()[0])
