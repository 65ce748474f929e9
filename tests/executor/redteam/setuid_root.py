# property: setuid(0) is denied
# expect: pass
# stdout: denied
import os
try:
    os.setuid(0)
    print("root")
except OSError:
    print("denied")
