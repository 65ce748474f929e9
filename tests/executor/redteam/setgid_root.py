# property: setgid(0) is denied
# expect: pass
# stdout: denied
import os
try:
    os.setgid(0)
    print("root")
except OSError:
    print("denied")
