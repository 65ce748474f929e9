# property: 50 unreaped children (zombies) are cleared after the test
# expect: pass
# stdout: zombies
import os
for _ in range(50):
    if os.fork() == 0:
        os._exit(0)
print("zombies")
