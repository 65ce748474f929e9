# property: the hostname cannot be changed
# expect: pass
# stdout: denied
import socket
try:
    socket.sethostname("evil")
    print("changed")
except OSError:
    print("denied")
