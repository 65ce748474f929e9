# property: binary bytes on stdout are compared as text, not a crash
# expect: wrong_answer
# stdout: 0
import sys
sys.stdout.buffer.write(bytes(range(256)) * 16)
