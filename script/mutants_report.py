"""Summarise a cosmic-ray session (its `dump` on stdin): killed, equivalent (listed in the module's
toml with a reason), and surviving mutants with where they are. Exit 1 if any survive."""

import functools
import json
import sys
import tomllib
from pathlib import Path


@functools.cache
def _lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()


def _where(mutation: dict, source: str) -> str:
    return (f"{mutation['module_path']}:{mutation['start_pos'][0]} {mutation['operator_name']} "
            f"(occurrence {mutation['occurrence']}) in {mutation['definition_name']}: {source}")


def main() -> int:
    config = tomllib.loads(Path(sys.argv[1]).read_text())
    equivalent = config.get("equivalent", [])
    equivalent_operators = config.get("equivalent-operators", {})
    counts = {"killed": 0, "timed out": 0, "equivalent": 0, "survived": 0, "could not be made": 0, "no answer": 0,
              "filtered": 0, "out of scope": 0, "not run": 0}
    survivors = []
    for line in sys.stdin:
        job, result = json.loads(line)
        mutation = job["mutations"][0]
        source = _lines(mutation["module_path"])[mutation["start_pos"][0] - 1].strip()
        if result is None:
            counts["not run"] += 1
        elif result["worker_outcome"] == "skipped":
            counts["out of scope" if result["output"] == "out of scope" else "filtered"] += 1
        elif result["test_outcome"] == "incompetent":  # cosmic-ray failed to write this mutant; nothing ran
            counts["could not be made"] += 1
        elif result["test_outcome"] == "killed" and result["output"] != "timeout":
            counts["killed"] += 1
        elif mutation["operator_name"] in equivalent_operators or any(
                e["operator"] == mutation["operator_name"] and e["line"] == source
                and e["function"] == str(mutation["definition_name"]) for e in equivalent):
            counts["equivalent"] += 1
        elif result["worker_outcome"] == "abnormal":  # the worker's answer never came (an overloaded machine)
            counts["no answer"] += 1
            survivors.append(f"  (no answer) {_where(mutation, source)}")
        elif result["test_outcome"] == "killed":  # by the timeout: slow, or looping; check by hand
            counts["timed out"] += 1
            survivors.append(f"  (timed out) {_where(mutation, source)}")
        else:
            counts["survived"] += 1
            survivors.append(f"  {_where(mutation, source)}")
    total = sum(counts.values())
    print("\n".join(survivors))
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"{config['cosmic-ray']['module-path']}: {total} mutants: {summary}")
    return 1 if counts["survived"] or counts["timed out"] or counts["no answer"] or counts["not run"] else 0


if __name__ == "__main__":
    sys.exit(main())
