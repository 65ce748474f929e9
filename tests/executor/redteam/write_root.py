# property: the jail's root is read-only
# expect: runtime_error
open("/evil", "w").write("x")
