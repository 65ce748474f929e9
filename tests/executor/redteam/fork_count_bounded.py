# property: a test holds at most executor.max_processes (64) processes: 63 children besides itself
# expect: pass
# stdout: 63
import os, time
count = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    count += 1
print(count)
