# property: /etc is not in the jail
# expect: runtime_error
# stdout-lacks: root:
print(open("/etc/shadow").read())
