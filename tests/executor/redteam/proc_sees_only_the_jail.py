# property: /proc shows the jail's processes only (the runner and the test)
# expect: pass
# stdout: [1, 2]
import os
print(sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
