"""Skip mutants outside a module's privacy scope: `[scope] functions` in mutants/MODULE.toml names the
functions that decide or carry audio (for modules where the rest is plumbing). Runs in .venv-mutants."""

import sys
import tomllib
from pathlib import Path

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

OUT_OF_SCOPE = "out of scope"


def main() -> int:
    session, config = sys.argv[1], tomllib.loads(Path(sys.argv[2]).read_text())
    functions = set(config.get("scope", {}).get("functions", ()))
    if not functions:
        return 0
    with use_db(session) as db:
        for item in db.pending_work_items:
            if not any(m.definition_name in functions for m in item.mutations):
                db.set_result(item.job_id, WorkResult(output=OUT_OF_SCOPE, worker_outcome=WorkerOutcome.SKIPPED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
