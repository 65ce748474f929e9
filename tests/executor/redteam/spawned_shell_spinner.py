# property: CPU time of a non-Python child (/bin/sh loop) counts against the limit
# expect: timeout
import os
pid = os.posix_spawn("/bin/sh", ["sh", "-c", "while :; do :; done"], {})
os.waitpid(pid, 0)
