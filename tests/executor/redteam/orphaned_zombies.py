# property: grandchildren orphaned to the runner are reaped with the test
# expect: pass
# stdout: orphans
import os, time
if os.fork() == 0:
    for _ in range(10):
        if os.fork() == 0:
            time.sleep(0.05)
            os._exit(0)
    os._exit(0)
time.sleep(0.2)
print("orphans")
