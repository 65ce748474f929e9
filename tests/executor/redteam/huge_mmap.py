# property: a huge anonymous mapping is oom
# expect: oom
import mmap
m = mmap.mmap(-1, 1 << 32)
