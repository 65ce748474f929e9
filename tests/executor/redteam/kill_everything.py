# property: kill(-1, SIGKILL) reaches neither the runner nor the host
# expect: pass
# stdout: still here
import os, signal
try:
    os.kill(-1, signal.SIGKILL)  # everything this process may signal, in or out of the jail
except ProcessLookupError:
    pass  # nothing else it can reach: the runner is exempt as init, the host is out of sight
print("still here")
