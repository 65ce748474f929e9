# property: no unix-domain sockets to host services
# expect: runtime_error
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/systemd/private")
