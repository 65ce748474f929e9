# property: NUL bytes and invalid UTF-8 survive into the report
# expect: wrong_answer
# stdout: ok
import sys
sys.stdout.buffer.write(b"\x00\xff\xfe\x80 ok")
