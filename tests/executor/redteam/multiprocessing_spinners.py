# property: multiprocessing workers spinning count against the limit
# expect: timeout
import multiprocessing as mp

def spin():
    while True:
        pass

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=spin) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
