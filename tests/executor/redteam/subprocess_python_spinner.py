# property: CPU time of a python3 subprocess counts against the limit
# expect: timeout
import subprocess, sys
subprocess.run([sys.executable, "-c", "while True: pass"])
print("never")
