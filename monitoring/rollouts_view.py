"""`rlef rollouts RUN_DIR`: read a run's sampled episodes the way a person wants to read them.

Turn by turn: the user message as the model saw it (the statement on turn 1, the execution feedback after),
the model's response with its python blocks syntax-highlighted, and what running the extracted program gave.
Rendering is rich's (panels, Syntax, tables); output that is not a terminal is plain text. Filters and the
sample format: :mod:`rlef.monitoring.episode_samples`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from rlef.monitoring.episode_samples import EpisodeSample

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)
SHORT_STATUS = {"pass": "ok", "wrong_answer": "WA", "runtime_error": "RE", "timeout": "TLE", "syntax_error": "SE",
                "oom": "MLE", "output_limit": "OLE", "sandbox_error": "SBX", "no_code": "-"}
STATUS_STYLE = {"pass": "bold green", "no_code": "bold magenta", "sandbox_error": "bold yellow"}


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "bold red"))


def response_renderables(text: str, theme: str = "monokai") -> list[RenderableType]:
    """Prose as text, fenced blocks highlighted (python unless the fence names another language)."""
    parts: list[RenderableType] = []
    pos = 0
    for m in _FENCE.finditer(text):
        if text[pos:m.start()].strip():
            parts.append(Text(text[pos:m.start()].strip("\n")))
        parts.append(Syntax(m.group(2).rstrip("\n"), m.group(1) or "python", theme=theme, line_numbers=False, word_wrap=True))
        pos = m.end()
    if text[pos:].strip() or not parts:
        parts.append(Text(text[pos:].strip("\n") or "(empty response)", style="" if text[pos:].strip() else "dim"))
    return parts


def _cut_lines(text: str, max_lines: int | None) -> str:
    lines = text.splitlines()
    if max_lines is None or len(lines) <= max_lines:
        return text
    return "\n".join(lines[:max_lines]) + f"\n[... {len(lines) - max_lines} more lines: --full shows them]"


def episode_header(s: EpisodeSample) -> Text:
    lo, hi = s.versions
    final = s.get("final") or {}
    text = Text(f"policy version {lo if lo == hi else f'{lo}-{hi}'}  final ")
    text.append_text(_status(s.final_status))
    text.append(f" ({final.get('tests_passed', 0)}/{final.get('tests_total', 0)} tests)  rewards {s.get('rewards')}")
    total = (s.get("timings") or {}).get("total_s")
    if total is not None:
        text.append(f"  {float(total):.1f} s")
    tags = [name for name, on in (("fixed by feedback", s.fixed_by_feedback), ("ignored feedback", s.ignored_feedback),
                                  ("never wrote code", s.never_code), ("random feedback", bool(s.get("random_feedback")))) if on]
    if tags:
        text.append("  [" + ", ".join(tags) + "]", style="bold cyan")
    return text


def episode_renderable(s: EpisodeSample, *, full: bool = False, prompt_lines: int = 12) -> RenderableType:
    """One episode as a panel of its turns."""
    body: list[RenderableType] = []
    for turn in s.turns:
        k = turn.get("turn", len(body) + 1)
        prompt = str(turn.get("prompt_text") or "")
        who = "problem statement" if k == 1 else "feedback shown"
        body.append(Rule(f"turn {k} - policy version {turn.get('policy_version')}", style="blue"))
        body.append(Panel(Text(prompt if full else _cut_lines(prompt, prompt_lines if k == 1 else 40)),
                          title=f"user ({who})", title_align="left", border_style="dim"))
        tokens = f"{turn.get('response_tokens', '?')} tokens, {turn.get('finish_reason', '?')}"
        body.append(Panel(Group(*response_renderables(str(turn.get("response_text") or ""))),
                          title=f"assistant ({tokens})", title_align="left", border_style="green"))
        outcome = Text("public tests: ")
        outcome.append_text(_status(str(turn.get("status"))))
        outcome.append(f" ({turn.get('public_passed', 0)}/{turn.get('public_total', 0)} passed)")
        if turn.get("code") is None:
            outcome.append("  no python block found", style="magenta")
        body.append(outcome)
    title = Text(f"{s.get('problem_id')}  {s.get('rollout_id')}", style="bold")
    return Panel(Group(episode_header(s), *body), title=title, title_align="left", border_style="bright_blue")


def summary_table(samples: Sequence[EpisodeSample]) -> Table:
    """One line per episode (``--list``); the episode is named ``<actor> #<n>`` (its rollout id without the
    start nonce; the full id is in the detailed view)."""
    table = Table(title=f"{len(samples)} sampled episode(s)", caption="turns: " + ", ".join(f"{v} = {k}" for k, v in SHORT_STATUS.items()))
    table.add_column("episode", no_wrap=True)
    table.add_column("problem", overflow="ellipsis", max_width=20)
    table.add_column("version", no_wrap=True)
    table.add_column("turns", min_width=8)
    table.add_column("final", no_wrap=True)
    table.add_column("reward", no_wrap=True, justify="right")
    table.add_column("flags", min_width=5)
    for s in samples:
        lo, hi = s.versions
        flags = " ".join(f for f, on in (("fixed", s.fixed_by_feedback), ("ignored", s.ignored_feedback), ("no-code", s.never_code)) if on)
        number = str(s.get("rollout_id", "")).rsplit("-", 1)[-1]
        table.add_row(f"{s.get('actor_id')} #{number}", str(s.get("problem_id")), f"{lo}" if lo == hi else f"{lo}-{hi}",
                      " ".join(SHORT_STATUS.get(str(t.get("status")), str(t.get("status"))) for t in s.turns),
                      Text(SHORT_STATUS.get(s.final_status, s.final_status), style=_status(s.final_status).style),
                      f"{sum(s.get('rewards') or []):.2f}", flags)
    return table


def print_rollouts(samples: Sequence[EpisodeSample], *, total: int, console: Console | None = None, as_list: bool = False,
                   full: bool = False) -> None:
    console = console or Console()
    if not samples:
        console.print(f"no sampled episode matches ({total} sampled in all)")
        return
    if as_list:
        console.print(summary_table(samples))
        return
    for s in samples:
        console.print(episode_renderable(s, full=full))
    console.print(f"{len(samples)} episode(s) shown of {total} sampled")
