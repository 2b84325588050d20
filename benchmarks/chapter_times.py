"""Time each chapter of the book, in quick or full mode, and record one ledger line per chapter.

    python benchmarks/chapter_times.py book/0*.ipynb                 # quick mode (what CI and the book build run)
    python benchmarks/chapter_times.py --full --threads 1 book/07_recipe.ipynb

Each chapter runs in its own process (``book/_tools/chapter_runner.py``, the runner the tests use), so the ledger
line can carry that chapter's peak memory (the largest resident set of the runner and its kernel). The executed
copies go to ``--out``; a chapter that fails records nothing and the script exits non-zero after the rest.

Quick mode is meant to take about a minute a chapter on 2 CPU cores; full mode (all of CIFAR-10, the real number
of steps) is meant for a GPU and takes a quarter of an hour or more a chapter on one CPU core. On a shared machine
the time depends on what else runs: each line records the load average beside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profit_edu import ledger  # noqa: E402  (after the path set-up, as a script)

RUNNER = ROOT / "book" / "_tools" / "chapter_runner.py"


def run_chapter(chapter: Path, out: Path, *, full: bool, env: dict[str, str]) -> tuple[int, float, float]:
    """Execute one chapter in a child process; return its exit status, wall seconds and peak memory in GiB."""
    cmd = [sys.executable, str(RUNNER), "--out", str(out), *(["--full"] if full else []), str(chapter)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)  # the rusage of the runner and the kernel it waited for
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return proc.returncode, seconds, usage.ru_maxrss / 2**20  # Linux reports kilobytes


def _shown(chapter: Path) -> str:
    """The chapter as the command line names it: relative to the repository when inside it."""
    path = chapter.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(chapter)


def ledger_line(chapter: Path, *, full: bool, threads: int | None, seconds: float, peak_gib: float,
                command: str) -> dict:
    """The ledger line of one timed chapter."""
    mode = "full" if full else "quick"
    return {"id": f"book/chapter/{chapter.stem}/{mode}", "scale": "cifar" if full else "quick", "mode": mode,
            "metric": "wall_seconds",
            "value": round(seconds, 1), "seed": 0, "command": command, "chapter": chapter.name,
            "dataset": "cifar10" if full else "cifar10 subset or synthetic",
            "hardware": f"{os.cpu_count()}-core CPU, {threads or 'default'} threads",
            "threads": threads, "peak_rss_gib": round(peak_gib, 2),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chapters", nargs="+", type=Path, help="notebooks, e.g. book/05_aiwq.ipynb")
    p.add_argument("--full", action="store_true", help="full mode (PROFIT_EDU_QUICK=0, no cell time-out)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernels (default: unset)")
    p.add_argument("--out", type=Path, default=ROOT / "_build" / "chapter-times", help="executed copies go here")
    p.add_argument("--no-ledger", action="store_true", help="do not append to the ledger")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    missing = [str(c) for c in args.chapters if not c.is_file()]
    if missing:
        p.error(f"no such chapter: {', '.join(missing)}")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    command = "python benchmarks/chapter_times.py" + (" --full" if args.full else "") + \
        (f" --threads {args.threads}" if args.threads else "")
    failed = []
    for chapter in args.chapters:
        rc, seconds, peak = run_chapter(chapter, args.out, full=args.full, env=env)
        print(f"{chapter.name}: exit {rc}, {seconds:.0f} s, peak {peak:.2f} GiB", flush=True)
        if rc != 0:
            failed.append(chapter.name)
        elif not args.no_ledger:
            ledger.append(ledger_line(chapter, full=args.full, threads=args.threads, seconds=seconds,
                                      peak_gib=peak, command=f"{command} {_shown(chapter)}"))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
