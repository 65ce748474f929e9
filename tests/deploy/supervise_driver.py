"""Test driver: run the launcher's real Supervisor over process specs given as JSON (argv[1]).

JSON: {"log_dir": str, "backoff": [base, max, stable_after], "grace_s": float,
       "specs": [{"name", "role", "argv", "restart", optional "restart_argv", "max_restarts", "ends_run",
       "kill_leftovers"}]}. Exits with the Supervisor's exit code and writes
log_dir/summary.json; logs go to stderr so the test can read the scheduled restart delays.
"""

import json
import logging
import sys
from pathlib import Path

from rlef.deploy.process import Backoff, ProcessSpec
from rlef.deploy.supervisor import Supervisor, summary


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    base, cap, stable = plan["backoff"]
    specs = [ProcessSpec(s["name"], s["role"], tuple(s["argv"]), restart=s["restart"],
                         restart_argv=tuple(s["restart_argv"]) if s.get("restart_argv") else None,
                         max_restarts=s.get("max_restarts"), ends_run=s.get("ends_run", False),
                         kill_leftovers=s.get("kill_leftovers", False)) for s in plan["specs"]]
    sup = Supervisor(specs, Path(plan["log_dir"]), Backoff(base, cap, stable), grace_s=plan["grace_s"])
    sup.install_signal_handlers()
    code = sup.run()
    (Path(plan["log_dir"]) / "summary.json").write_text(json.dumps(summary(sup)))
    return code


if __name__ == "__main__":
    sys.exit(main())
