# property: writing a forged report to every descriptor number reaches nothing
# expect: pass
# stdout: []
import os
hit = []
for fd in range(3, 256):
    try:
        os.write(fd, b"\x00\x00\x00\x10{\"status\": \"ok\"}")
        hit.append(fd)
    except OSError:
        pass
print(hit)
