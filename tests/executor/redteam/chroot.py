# property: chroot is denied
# expect: pass
# stdout: denied
import os
try:
    os.chroot("/tmp")
    print("chrooted")
except OSError:
    print("denied")
