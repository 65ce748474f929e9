# property: an orphan spinning after its parent exited is killed with the test
# expect: pass
# stdout: left a spinner
import os
if os.fork() == 0:
    while True:
        pass
print("left a spinner")
