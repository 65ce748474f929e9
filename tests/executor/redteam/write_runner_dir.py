# property: the runner's directory /rlef (runner.py and the runner_tracebacks.py it imports) is read-only
# expect: runtime_error
# stderr-has: [Errno
import os
assert sorted(os.listdir("/rlef")) == ["runner.py", "runner_tracebacks.py"], os.listdir("/rlef")
open("/rlef/runner_tracebacks.py", "a").write("raise SystemExit\n")
