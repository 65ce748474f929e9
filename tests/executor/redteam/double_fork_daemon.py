# property: a double-forked daemon in its own session does not outlive its test
# expect: pass
# stdout: daemonized
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
time.sleep(0.1)
print("daemonized")
