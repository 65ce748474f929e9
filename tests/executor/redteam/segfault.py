# property: a segmentation fault is a runtime error
# expect: runtime_error
import ctypes
ctypes.string_at(0)
