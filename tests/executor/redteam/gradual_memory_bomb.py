# property: growing memory is oom
# expect: oom
chunks = []
while True:
    chunks.append(" " * (1 << 20))
