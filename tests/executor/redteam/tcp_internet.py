# property: no TCP to the internet
# expect: runtime_error
# stdout-lacks: connected
import socket
socket.create_connection(("1.1.1.1", 443), timeout=0.5)
print("connected")
