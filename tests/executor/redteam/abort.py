# property: abort() is a runtime error
# expect: runtime_error
import os
os.abort()
