# property: sleeping is bounded by the wall clock
# expect: timeout
import time
time.sleep(3600)
