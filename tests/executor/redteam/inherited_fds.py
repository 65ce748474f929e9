# property: the test inherits only stdin, stdout and stderr
# expect: pass
# stdout: []
import os


def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


print([fd for fd in range(3, 1024) if is_open(fd)])
