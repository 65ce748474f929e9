"""Bounded traceback rendering for the warm runner (executor/runner.py): runs INSIDE the jail, stdlib only.

A deep recursion (sys.setrecursionlimit(10**6)) leaves a traceback of a million frames, and
traceback.format_exception would build a million FrameSummary objects first, running out of memory and
printing only the exception's name. :func:`format_exception_bounded` walks the chain once keeping a fixed
number of frames, so the type, the message and the innermost frames always come out, in the layout python3
prints. The runner imports it from the jail's /rlef next to itself (the host binds both files there).
"""

import collections
import linecache
import traceback

TB_OUTER = 3  # outermost frames kept (where the program started)
TB_INNER = 30  # innermost frames kept (where it failed)
TB_REPEAT = 3  # like python3: a line repeated more often is shown this many times, then counted
MAX_CHAIN = 5  # causes / contexts shown
MAX_MESSAGE_CHARS = 4000


def _frame_lines(tb):
    """(outer entries, omitted count, inner entries), each entry (filename, lineno, name)."""
    outer, inner = [], collections.deque(maxlen=TB_INNER)
    total = 0
    while tb is not None:
        code = tb.tb_frame.f_code
        entry = (code.co_filename, tb.tb_lineno, code.co_name)
        if total < TB_OUTER:
            outer.append(entry)
        else:
            inner.append(entry)
        total += 1
        tb = tb.tb_next
    return outer, max(0, total - TB_OUTER - TB_INNER), list(inner)


def _render_entries(entries, out):
    last, repeats = None, 0
    for filename, lineno, name in entries:
        if (filename, lineno, name) == last:
            repeats += 1
            if repeats >= TB_REPEAT:
                continue
        else:
            _flush_repeats(repeats, out)
            last, repeats = (filename, lineno, name), 0
        out.append('  File "%s", line %s, in %s\n' % (filename, lineno, name))
        line = linecache.getline(filename, lineno or 0).strip() if filename == "main.py" else ""
        if line:
            out.append("    %s\n" % line[:200])
    _flush_repeats(repeats, out)


def _flush_repeats(repeats, out):
    if repeats >= TB_REPEAT:
        more = repeats - TB_REPEAT + 1
        out.append("  [Previous line repeated %d more time%s]\n" % (more, "s" if more > 1 else ""))


def _exception_only(exc):
    try:
        text = "".join(traceback.format_exception_only(type(exc), exc))
    except BaseException:
        text = "%s\n" % type(exc).__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "...\n"
    return text


def _skip_runner(tb, runner_file):
    # Drop the runner's own frame so the model sees only its program ("main.py").
    if tb is not None and tb.tb_frame.f_code.co_filename == runner_file:
        return tb.tb_next
    return tb


def format_exception_bounded(exc, runner_file):
    """The text python3 prints for an uncaught ``exc``, with at most TB_OUTER + TB_INNER frames per exception;
    an outermost frame of ``runner_file`` (the runner's exec of the program) is left out."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen and len(chain) < MAX_CHAIN:
        seen.add(id(exc))
        chain.append(exc)
        if exc.__cause__ is not None:
            exc = exc.__cause__
        elif exc.__context__ is not None and not exc.__suppress_context__:
            exc = exc.__context__
        else:
            exc = None
    out = []
    for index in range(len(chain) - 1, -1, -1):
        exc = chain[index]
        tb = _skip_runner(exc.__traceback__, runner_file)
        if tb is not None:
            out.append("Traceback (most recent call last):\n")
            outer, omitted, inner = _frame_lines(tb)
            _render_entries(outer, out)
            if omitted:
                out.append("  [... %d frames omitted ...]\n" % omitted)
            _render_entries(inner, out)
        out.append(_exception_only(exc))
        if index:
            newer = chain[index - 1]
            if newer.__cause__ is exc:
                out.append("\nThe above exception was the direct cause of the following exception:\n\n")
            else:
                out.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    return "".join(out)
