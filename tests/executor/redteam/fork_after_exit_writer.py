# property: a child writing after its parent exited cannot pass the output to the next test
# expect: pass
# stdout: early
import os, sys, time
if os.fork() == 0:
    time.sleep(0.2)
    sys.stdout.write("late\n")
    sys.stdout.flush()
    os._exit(0)
print("early")
