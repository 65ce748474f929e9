# property: a program that SIGKILLs itself is a runtime error, not a guessed oom
# expect: runtime_error
import os, signal
os.kill(os.getpid(), signal.SIGKILL)
