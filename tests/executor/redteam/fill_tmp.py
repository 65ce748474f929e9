# property: /tmp is a small private tmpfs: filling it fails, nothing reaches the host disk
# expect: runtime_error
block = b"d" * (1 << 20)
with open("/tmp/fill", "wb") as f:
    for _ in range(200):
        f.write(block)
