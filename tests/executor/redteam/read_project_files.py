# property: project files and /root are not in the jail
# expect: pass
# stdout: []
import os
paths = ["/work/main/pyproject.toml", "/root/.bashrc", "/root/.ssh/id_rsa", "/work", "/home"]
print([p for p in paths if os.path.exists(p)])
