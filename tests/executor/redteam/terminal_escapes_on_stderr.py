# property: escape sequences and binary on stderr are a plain runtime error
# expect: runtime_error
import sys
sys.stderr.buffer.write(b"\x1b[2J\x1b]0;pwned\x07\xff\x00")
sys.exit(3)
