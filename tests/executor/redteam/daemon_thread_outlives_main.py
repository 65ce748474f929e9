# property: a daemon thread still spinning when main exits ends with the process
# expect: pass
# stdout: main done
import threading

def spin():
    while True:
        pass

threading.Thread(target=spin, daemon=True).start()
print("main done")
