"""How long `failover check` takes on hostile and worst-case config files (target: < 2 s).

Usage, from the repository root with the project's virtualenv:

    python tests/bench/config_check.py            # every case, 3 runs each
    python tests/bench/config_check.py --runs 10

Each case is written to a temporary directory and checked by `python -m failover check PATH`
in a fresh process, as a user would run it, so the figures include Python's start-up (the
first row, a valid two-line config, shows how much). Printed per case: exit status, the
slowest and the median wall-clock seconds, the peak RSS of the slowest run, and the first line
of stderr. The cases are the worst the loader's bounds allow: just under 1 MiB, just under
20,000 values, nesting at the bound, plus the hostile inputs of tests/test_configfile.py and
tests/test_config.py.
pytest does not collect this file (its name does not start with `test_`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORIGIN = 'origins:\n  - {name: a, url: "http://127.0.0.1:9001"}\n'
MIB = 1024 * 1024


def billion_laughs() -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 10)]
    return "\n".join(lines) + "\n"


def cases() -> dict[str, str | bytes | None]:
    """name -> file content (None: the path is special and given in the name)."""
    return {
        "valid, 2 lines": ORIGIN,
        "19,990 list items": ORIGIN + "x: [" + ",".join(["1"] * 19_990) + "]\n",
        "19,990 origins that are not mappings": "origins: [" + ",".join(["1"] * 19_990) + "]\n",
        "2,800 valid origins": "origins:\n"
        + "".join(
            f'  - {{name: o{i}, url: "http://127.0.0.1:{1024 + i}", priority: {i % 1000}}}\n'
            for i in range(2_800)
        ),
        "9,990 probe headers": ORIGIN
        + "health:\n  headers:\n"
        + "".join(f"    h{i}: v{i}\n" for i in range(9_990)),
        "1 MiB string (path)": ORIGIN + 'health: {path: "/' + "a" * (MIB - 200) + '"}\n',
        "1 MiB status list": ORIGIN
        + 'health: {expect_status: "'
        + ",".join(["100-599"] * ((MIB - 200) // 8))
        + '"}\n',
        "1 MiB comment": ORIGIN + "#" * (MIB - len(ORIGIN) - 1) + "\n",
        "over 1 MiB": ORIGIN + "#" * MIB + "\n",
        "nesting 1,000 deep (flow)": ORIGIN + "x: " + "[" * 1000 + "]" * 1000 + "\n",
        "nesting 63 deep, 19,000 wide": ORIGIN
        + "x: "
        + "[" * 62
        + ",".join(["1"] * 19_000)
        + "]" * 62
        + "\n",
        "alias bomb (10^10 values)": billion_laughs() + ORIGIN,
        "100,000-digit integer": ORIGIN + "events: {history: " + "9" * 100_000 + "}\n",
        "not UTF-8": ORIGIN.encode() + b"x: \xff\n",
        "infinite interval": ORIGIN + "health: {interval: .inf}\n",
        "regex 4096 characters": ORIGIN + "health: {expect_body: '" + "(?:a|b)" * 585 + "'}\n",
        "/dev/zero": None,
        "FIFO": None,
    }


def run_check(path: str, cwd: Path) -> tuple[int, float, int, str]:
    """Exit status, wall-clock seconds, peak RSS in KiB, and the first line of output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAILOVER_")}
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "failover", "check", path],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().decode("utf-8", "replace").splitlines()
    return process.returncode, elapsed, usage.ru_maxrss, lines[0] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="failover-check-bench-") as scratch:
        root = Path(scratch)
        print(f"{'case':<38} {'exit':>4} {'max s':>6} {'median':>6} {'RSS MB':>6}  first line")
        for name, content in cases().items():
            if name == "/dev/zero":
                path = "/dev/zero"
            elif name == "FIFO":
                path = str(root / "config.fifo")
                os.mkfifo(path)
            else:
                assert content is not None
                target = root / "case.yaml"
                if isinstance(content, bytes):
                    target.write_bytes(content)
                else:
                    target.write_text(content, encoding="utf-8")
                path = str(target)
            runs = [run_check(path, root) for _ in range(args.runs)]
            code, slowest, rss, line = max(runs, key=lambda run: run[1])
            median = statistics.median(run[1] for run in runs)
            line = line.replace(str(root), "$TMP")
            line = line if len(line) <= 70 else line[:67] + "..."
            print(f"{name:<38} {code:>4} {slowest:>6.2f} {median:>6.2f} {rss / 1024:>6.0f}  {line}")


if __name__ == "__main__":
    main()
