# property: no UDP
# expect: runtime_error
# stdout-lacks: sent
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"x", ("8.8.8.8", 53))
print("sent")
