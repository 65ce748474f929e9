# property: SIGKILL, SIGTERM, SIGSTOP to the runner (pid 1) do nothing
# expect: pass
# stdout: still here
import os, signal
for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
    try:
        os.kill(1, sig)
    except OSError:
        pass
print("still here")
