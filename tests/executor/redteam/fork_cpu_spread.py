# property: 4 forked children share the CPU-time limit: 4 x 0.35 s against 1 s is a timeout
# expect: timeout
# stdout: done
import os, time
pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        start = time.process_time()
        while time.process_time() - start < 0.35:
            pass
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print("done")
