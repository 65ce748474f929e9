# property: memory hidden in /tmp files counts against the test
# expect: runtime_error|oom
# stdout-lacks: fits
block = b"m" * (1 << 20)
for i in range(60):
    with open("/tmp/m%d" % i, "wb") as f:
        f.write(block)
x = bytearray(100 << 20)
for i in range(0, len(x), 4096):
    x[i] = 1
print("fits")
