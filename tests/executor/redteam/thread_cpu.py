# property: threads spinning count against the CPU-time limit
# expect: timeout
import threading

def spin():
    while True:
        pass

for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
spin()
