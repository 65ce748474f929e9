# property: a shell started by the test finds no /etc/passwd either
# expect: pass
# stdout: absent
import subprocess
result = subprocess.run(["/bin/sh", "-c", "cat /etc/passwd"], capture_output=True)
print("absent" if result.returncode != 0 and not result.stdout else "present")
