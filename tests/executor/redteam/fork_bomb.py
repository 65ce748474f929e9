# property: a fork bomb meets the process limit and then the CPU-time limit
# expect: timeout
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
