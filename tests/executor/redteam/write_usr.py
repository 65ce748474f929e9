# property: /usr is read-only
# expect: runtime_error
open("/usr/lib/evil", "w").write("x")
