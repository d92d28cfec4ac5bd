"""The whole `guard run` daemon at real-time pace on a quiet day: its average CPU (share of one core) and peak RSS.

A day profile (mostly a -64 dBFS room; now and then a wake word, a request or talk; tests/speech.py) is played
as if live (`guard run --source day.wav`, no --fast) with the default configuration, beside the same daemon
with resting turned off (`[wake] rest_below_dbfs = -120`) as the baseline measured in the same run. Runs are
interleaved and repeated; CPU is the process's user+system time over its wall time, from /proc, after its first
10 s (start-up); peak RSS is its VmHWM. The median is quoted with its range.

    .venv/bin/python bench/bench_daemon.py [--minutes 3] [--repeats 3]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
GUARD = ROOT / ".venv" / "bin" / "guard"
SETTLE_SECONDS = 10  # start-up (imports, model loading) is left out: the figure is what a day of running costs

import speech  # noqa: E402
from procstat import cpu_seconds, peak_rss_mb  # noqa: E402

VARIANTS = {
    "default": "",
    "never resting": "[wake]\nrest_below_dbfs = -120\n",
}


def run_once(wav: Path, folder: Path, extra: str) -> tuple[float, float]:
    """One daemon over the whole file: (share of one core after its first SETTLE_SECONDS, peak RSS in MB)."""
    toml = folder / "guard.toml"
    toml.write_text(f'[audit]\npath = "{folder / "audit.jsonl"}"\n{extra}')
    process = subprocess.Popen([str(GUARD), "--config", str(toml), "run", "--source", str(wav), "--gpio", "mock"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    first = last = None
    rss = 0.0
    while process.poll() is None:
        try:
            sample, rss = (time.monotonic(), cpu_seconds(process.pid)), peak_rss_mb(process.pid)
        except (OSError, IndexError):
            break
        if sample[0] - started >= SETTLE_SECONDS:
            first, last = first or sample, sample
        time.sleep(0.5)
    if process.wait() != 0:
        raise SystemExit(f"guard run exited {process.returncode} ({extra.strip() or 'default'})")
    if first is None or last[0] - first[0] < 10:
        raise SystemExit("the day profile is too short to measure past start-up")
    return (last[1] - first[1]) / (last[0] - first[0]), rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the day profile (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each variant (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wav = speech.write_wav(tmp / "day.wav", speech.day_profile(args.minutes * 60))
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        for repeat in range(args.repeats):
            for name, extra in VARIANTS.items():
                folder = tmp / f"{name}-{repeat}"
                folder.mkdir()
                results[name].append(run_once(wav, folder, extra))
                print(f"  run {repeat + 1} {name}: {100 * results[name][-1][0]:.2f} % of a core, "
                      f"{results[name][-1][1]:.0f} MB", flush=True)
    base = statistics.median(cpu for cpu, _ in results["never resting"])
    print(f"\n`guard run`, {args.minutes:g} min day profile at real-time pace, {args.repeats} interleaved runs each; "
          "median (range)")
    print("| configuration | CPU, % of one core | vs never resting | peak RSS |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        cpus, rsss = [c * 100 for c, _ in runs], [r for _, r in runs]
        print(f"| {name} | {statistics.median(cpus):.2f} ({min(cpus):.2f}-{max(cpus):.2f}) "
              f"| {statistics.median(cpus) / 100 / base:.2f} | {statistics.median(rsss):.0f} MB "
              f"({min(rsss):.0f}-{max(rsss):.0f}) |")


if __name__ == "__main__":
    main()
