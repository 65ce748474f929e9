# property: no TCP, not even to localhost
# expect: runtime_error
# stdout-lacks: connected
import socket
socket.create_connection(("127.0.0.1", 22), timeout=0.5)
print("connected")
