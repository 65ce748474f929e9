# property: the clock cannot be set
# expect: pass
# stdout: denied
import time
try:
    time.clock_settime(time.CLOCK_REALTIME, 0)
    print("set")
except OSError:
    print("denied")
