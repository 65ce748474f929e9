# property: a test that stops itself (SIGSTOP) is ended at its wall-clock limit
# expect: timeout
import os, signal
os.kill(os.getpid(), signal.SIGSTOP)
print("resumed")
