# property: thread creation is bounded (process limit and address space)
# expect: pass
# stdout: bounded
import threading
count = 0
stop = threading.Event()
try:
    for _ in range(100000):
        threading.Thread(target=stop.wait, daemon=True).start()
        count += 1
except (RuntimeError, MemoryError):
    pass
stop.set()
print("bounded" if count < 1000 else "unbounded %d" % count)
