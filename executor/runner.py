"""Warm runner: runs INSIDE the jail (system python3, stdlib only, uid 65534, pid 1 of the jail's pid namespace).

Its one companion is executor/runner_tracebacks.py (the bounded rendering of a program's uncaught exception),
bound next to it into the jail's /rlef.

Scope: one program against many tests. The interpreter starts once; the program is compiled once (a syntax
error reports ``compile_ok: false`` and runs nothing); every test is a ``fork()`` of this warm process, so a
test pays a fork instead of a Python start-up.

Protocol with the host (fd 0 in, fd 1 out; both moved to high fds at start so no child can touch them):

- host -> runner, first frame: ``>I`` length + JSON setup ``{code, time_s, wall_s, memory_bytes,
  max_output_bytes, stderr_tail_bytes}`` (time_s: CPU seconds per test, wall_s: wall-clock seconds); runner answers with a result frame whose header is ``{compile_ok, message}``.
- host -> runner, then one frame per test: ``>I`` length + the raw stdin bytes. The runner answers with one
  result frame. The host closes the pipe to end the job. Before every report (the compile report and each
  test's) the runner has already forked the child for the next test, waiting for ``go``: the host moves it
  into that test's cgroup before it sends the input, so no program code ever runs outside its cgroup.
- result frame: ``>III`` (header, stdout, stderr lengths) + JSON header + stdout bytes + stderr bytes, header
  ``{status, exit_code, signal, time_s, cpu_s, maxrss_bytes}`` (the test's own process) where status is one of ``ok`` (exit 0), ``exit`` (non-zero
  exit or killed by a signal), ``timeout`` (the runner killed it at the CPU or wall-clock limit), ``output_limit``,
  ``runner_error`` (the fork itself failed).

Invariants: the runner is not dumpable (tests cannot reach its control pipes or memory through /proc/1);
each child gets its own stdin (a memfd holding the test input), stdout/stderr pipes, address
space limit (memory + slack, set by the host in memory_bytes) and CPU limit; after every test the runner
kills every other process in the jail (``kill(-1, SIGKILL)`` from pid 1 spares only itself), so nothing a
test started survives into the next test. As pid 1 of the namespace the runner cannot be killed by its own
children (the kernel drops SIGKILL/SIGSTOP sent to a namespace init from inside it).
"""

import json
import os
import resource
import select
import signal
import struct
import sys
import time

# Pre-import what competitive programs and test harnesses use, so children find them warm.
import atexit, bisect, collections, functools, heapq, io, itertools, linecache, math, re, string, threading, traceback  # noqa: E401,F401

# The traceback renderer sits next to this file (the jail's /rlef); -I keeps that directory off sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from runner_tracebacks import format_exception_bounded
finally:
    del sys.path[0]

CTRL_IN = os.dup(0)
CTRL_OUT = os.dup(1)
os.set_inheritable(CTRL_IN, False)
os.set_inheritable(CTRL_OUT, False)
READ_CHUNK = 1 << 16
# How often a running test's CPU time is read from /proc (the jail's own procfs) while it produces no output.
CPU_POLL_S = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of ``pid`` (0.0 when it is already gone)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(CTRL_IN, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame():
    head = read_exact(4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    return read_exact(n) if n else b""


def write_all(data):
    view = memoryview(data)
    while view:
        written = os.write(CTRL_OUT, view)
        view = view[written:]


def send_result(header, out=b"", err=b""):
    head = json.dumps(header).encode()
    write_all(struct.pack(">III", len(head), len(out), len(err)) + head + out + err)


def kill_others():
    """Kill every process in the jail except this one (pid 1), then reap them all.

    Repeated until nothing is left: a process forked while the signal was being delivered is caught by the
    next round instead of surviving.
    """
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.0002)


def child_main(code_obj, stdin_fd, out_w, err_w, setup):
    """In the forked child: wire fds, apply limits, run the program, exit like python3 would."""
    os.dup2(stdin_fd, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in (stdin_fd, out_w, err_w, CTRL_IN, CTRL_OUT):
        os.close(fd)
    os.setpgid(0, 0)
    cpu = int(setup["time_s"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = setup["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # The streams python3 itself would make for pipes: buffered binary under ``.buffer``, utf-8 text on top.
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8", errors="surrogateescape")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8", errors="surrogateescape")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8", errors="backslashreplace",
        line_buffering=True)
    sys.argv = ["main.py"]
    module = type(sys)("__main__")
    module.__file__ = "main.py"
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    global _reserve
    _reserve = bytearray(MEMORY_RESERVE)
    status = 0
    try:
        exec(code_obj, module.__dict__)
    except SystemExit as exc:
        status = exit_status(exc)
    except BaseException as exc:  # the program's own error: report it the way python3 would
        status = 1
        print_exception(exc)
    status = finish(status)
    os._exit(status)


def exit_status(exc):
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return 1


MEMORY_RESERVE = 1 << 20  # freed before rendering so a MemoryError can still be reported
_reserve = None


def print_exception(exc):
    global _reserve
    _reserve = None
    try:
        text = format_exception_bounded(exc, __file__)
    except BaseException:
        text = "%s\n" % type(exc).__name__
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except BaseException:
        os.write(2, text.encode("utf-8", "backslashreplace")[-65536:])


def finish(status):
    """Flush and shut down like interpreter exit: non-daemon threads, atexit, stdout."""
    try:
        threading._shutdown()
    except BaseException as exc:
        print_exception(exc)
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException as exc:
            if stream is sys.stdout and not isinstance(exc, BrokenPipeError):
                print_exception(exc)
                status = status or 1
    return status


def prefork(code_obj, setup):
    """Fork the next test's child ahead of time; it waits for ``go`` (so a test pays no fork latency).

    Returns ``(pid, stdin_fd, out_r, err_r, go_w)`` or ``(None, error)`` when fork fails (a leftover of a
    fork bomb is killed after every test, so this is rare). The stdin memfd is shared: the parent writes the
    test input into it and rewinds it before saying go.
    """
    stdin_fd = os.memfd_create("stdin", 0)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (stdin_fd, out_r, out_w, err_r, err_w, go_r, go_w):
            os.close(fd)
        return None, "fork failed: %s" % exc
    if pid == 0:
        try:
            os.close(go_w)
            os.close(out_r)
            os.close(err_r)
            if os.read(go_r, 1) != b"g":
                os._exit(0)  # the job ended: this spare is not needed
            os.close(go_r)
            child_main(code_obj, stdin_fd, out_w, err_w, setup)
        finally:
            os._exit(70)
    for fd in (out_w, err_w, go_r):
        os.close(fd)
    return pid, stdin_fd, out_r, err_r, go_w


def discard(spare):
    if spare[0] is not None:
        for fd in spare[1:]:
            os.close(fd)
        kill_others()


def run_test(spare, setup, data):
    max_out = setup["max_output_bytes"]
    tail = setup["stderr_tail_bytes"]
    if spare[0] is None:
        kill_others()
        return {"status": "runner_error", "error": spare[1]}, b"", b""
    pid, stdin_fd, out_r, err_r, go_w = spare
    view = memoryview(data)
    while view:
        view = view[os.write(stdin_fd, view):]
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    os.close(stdin_fd)
    start = time.monotonic()
    os.write(go_w, b"g")
    os.close(go_w)
    deadline = start + setup["wall_s"]
    cpu_limit = setup["time_s"]
    out, err = bytearray(), bytearray()
    open_fds = [out_r, err_r]
    pidfd = os.pidfd_open(pid)
    verdict = None
    exited = False

    def take(fd, chunk):
        nonlocal verdict
        if fd == out_r:
            out.extend(chunk)
            if len(out) > max_out:
                verdict = "output_limit"
        else:
            err.extend(chunk)
            if len(err) > 2 * tail:
                del err[: len(err) - tail]

    while verdict is None and not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            verdict = "timeout"
            break
        ready, _, _ = select.select(open_fds + [pidfd], [], [], min(remaining, CPU_POLL_S))
        if not ready and cpu_seconds(pid) >= cpu_limit:
            verdict = "timeout"
            break
        for fd in ready:
            if fd == pidfd:
                exited = True
                continue
            chunk = os.read(fd, READ_CHUNK)
            if chunk:
                take(fd, chunk)
            else:
                open_fds.remove(fd)
    if exited:
        # The program is gone: collect what it left in the pipes (a grandchild may still hold them open).
        for fd in open_fds:
            os.set_blocking(fd, False)
            while verdict is None:
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                take(fd, chunk)
    os.close(pidfd)
    elapsed = time.monotonic() - start
    if not exited:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status, usage = os.wait4(pid, 0)
    # Anything the test left behind (grandchildren, daemons) dies here.
    kill_others()
    os.close(out_r)
    os.close(err_r)
    header = {"time_s": elapsed, "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_bytes": usage.ru_maxrss * 1024,
              "exit_code": None, "signal": None}
    if os.WIFEXITED(status):
        header["exit_code"] = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        header["signal"] = os.WTERMSIG(status)
    if verdict:
        header["status"] = verdict
    elif header["exit_code"] == 0:
        header["status"] = "ok"
    else:
        header["status"] = "exit"
    return header, bytes(out[: max_out]), bytes(err[-tail:])


PR_SET_DUMPABLE = 4


def make_undumpable():
    """Close /proc/1/{fd,mem,environ,...} to the tests: they run as our uid, and a dumpable runner's control
    pipes could be reopened through /proc/1/fd to forge reports, and its memory rewritten through /proc/1/mem.
    A non-dumpable process's /proc files belong to root, which the jail does not map."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def main():
    make_undumpable()
    # Our own stdio now points nowhere useful: children get fresh fds per test.
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    raw = read_frame()
    if raw is None:
        return 0
    setup = json.loads(raw)
    try:
        code_obj = compile(setup["code"], "main.py", "exec", dont_inherit=True)
    except BaseException as exc:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError...
        message = "".join(traceback.format_exception_only(type(exc), exc))
        send_result({"compile_ok": False, "message": message})
        return 0
    # The program's source, for traceback lines like python3 prints (the file itself is not in the jail).
    linecache.cache["main.py"] = (len(setup["code"]), None, setup["code"].splitlines(True), "main.py")
    # The next test's child is forked BEFORE each report: once the host has a report, the child it will
    # run next exists and waits, so the host can move it into the test's cgroup before it runs any code.
    spare = prefork(code_obj, setup)
    send_result({"compile_ok": True, "message": ""})
    while True:
        data = read_frame()
        if data is None:
            discard(spare)
            return 0
        header, out, err = run_test(spare, setup, data)
        spare = prefork(code_obj, setup)
        send_result(header, out, err)


if __name__ == "__main__":
    sys.exit(main())
