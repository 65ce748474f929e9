"""The "Sampled episodes" section of ``rlef report``: one episode of each kind, turn by turn, as markdown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rlef.monitoring.episode_samples import EpisodeSample, read_samples, samples_dir


#: The kinds of episode the report shows one of each (title, predicate).
EPISODE_KINDS: list[tuple[str, Callable[[EpisodeSample], bool]]] = [
    ("Fixed by feedback (failed at turn 1, solved later)", lambda s: s.fixed_by_feedback),
    ("Ignored the feedback (wrote the same program again)", lambda s: s.ignored_feedback),
    ("Never produced code", lambda s: s.never_code),
]


def _fenced(text: str, lang: str = "", max_lines: int = 30) -> list[str]:
    lines = text.rstrip("\n").splitlines() or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"[... {len(lines) - max_lines} more lines]"]
    fence = "````" if any(line.startswith("```") for line in lines) else "```"
    return [fence + lang, *lines, fence]


def episode_markdown(s: EpisodeSample) -> list[str]:
    """One episode, turn by turn: status, the program, the feedback it got (as the model saw it)."""
    lo, hi = s.versions
    final = s.get("final") or {}
    out = [f"`{s.get('rollout_id')}`: problem `{s.get('problem_id')}`, policy version {lo if lo == hi else f'{lo}-{hi}'}, "
           f"final **{s.final_status}** ({final.get('tests_passed', 0)}/{final.get('tests_total', 0)} tests), "
           f"rewards {s.get('rewards')}", ""]
    for turn in s.turns:
        out.append(f"Turn {turn.get('turn')}: public tests **{turn.get('status')}** "
                   f"({turn.get('public_passed', 0)}/{turn.get('public_total', 0)}), {turn.get('response_tokens', '?')} tokens")
        out.append("")
        out += _fenced(turn["code"], "python") if turn.get("code") is not None else _fenced(str(turn.get("response_text") or ""), "text", 12)
        if turn.get("feedback"):
            out += ["", "Feedback shown:", ""] + _fenced(str(turn["feedback"]), "text", 20)
        out.append("")
    return out


def sampled_episodes_section(run_dir: Path) -> list[str]:
    """Markdown lines: how many episodes were sampled, and one of each :data:`EPISODE_KINDS` (the newest)."""
    samples = read_samples(run_dir) if samples_dir(run_dir).is_dir() else []
    lines = ["## Sampled episodes", ""]
    if not samples:
        return lines + ["No sampled episodes in this run directory (`RUN_DIR/samples/`).", ""]
    counts = ", ".join(f"{title.split(' (')[0].lower()}: {sum(pred(x) for x in samples)}" for title, pred in EPISODE_KINDS)
    lines += [f"{len(samples)} episode(s) sampled by {len({s.get('actor_id') for s in samples})} actor(s); "
              f"solved: {sum(s.solved for s in samples)}; {counts}. Read them all with `rlef rollouts {run_dir}`.", ""]
    for title, pred in EPISODE_KINDS:
        found = next((x for x in reversed(samples) if pred(x)), None)
        lines += [f"### {title}", ""]
        lines += episode_markdown(found) if found is not None else ["None in the sample.", ""]
    return lines
