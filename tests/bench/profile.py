"""Profile the proxy's hot path: py-spy samples `failover run` while wrk drives it.

Usage, from the repository root with the project's virtualenv (`pip install py-spy` first):

    python tests/bench/profile.py                 # 1 KiB object, 20 s of samples
    python tests/bench/profile.py --object /1m.bin --seconds 10

Needs /usr/sbin/nginx and /usr/bin/wrk (an nginx static origin, as in throughput.py); never run
by CI. Prints the top functions by own time and, within failover/, by cumulative time.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.bench import throughput as bench  # a sibling script

FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")


def top(raw: Path, count: int = 15) -> None:
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        total += n
        names = []
        for frame in stack.split(";"):
            match = FRAME.match(frame)
            names.append(f"{match.group(1)} ({match.group(2)})" if match else frame)
        own[names[-1]] += n
        for name in set(names):
            cumulative[name] += n
    print(f"{total} samples\n\nown time:")
    for name, n in own.most_common(count):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\ncumulative, failover/ only:")
    ours = [(k, v) for k, v in cumulative.most_common() if "(failover/" in k]
    for name, n in ours[:count]:
        print(f"  {100 * n / total:5.1f}%  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", default="/1k.bin", choices=["/1k.bin", "/1m.bin"])
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    beside = Path(sys.executable).with_name("py-spy")  # installed into this virtualenv
    spy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if spy is None:
        raise SystemExit("py-spy is missing: pip install py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="failover-profile-"))
    procs = bench.Processes(workdir)
    try:
        workdir.chmod(0o755)  # nginx workers run unprivileged when started as root
        www = workdir / "www"
        www.mkdir(mode=0o755)
        (www / "index.html").write_text("ok\n")  # what the proxy's health checks ask for
        (www / "index.html").chmod(0o644)
        for path, size in bench.OBJECTS.values():
            (www / path.lstrip("/")).write_bytes(os.urandom(size))
            (www / path.lstrip("/")).chmod(0o644)
        _, origin_port = bench.start_origin(procs, workdir, www)
        port = bench.free_port()
        config = bench.failover_config(port, origin_port, True)
        proxy = bench.start_failover(procs, workdir, "failover", config, port)
        bench.wait_ready(proxy, "/_failover/readyz")
        bench.run_wrk(proxy.url + args.object, 2)  # warm up
        wrk = subprocess.Popen(
            bench.wrk_argv(proxy.url + args.object, args.seconds + 4),
            stdout=subprocess.PIPE,
            text=True,
        )
        raw = workdir / "profile.txt"
        record = [spy, "record", "-p", str(proxy.process.pid), "-d", str(args.seconds)]
        subprocess.run([*record, "-r", "250", "--format", "raw", "-o", str(raw)], check=True)
        output, _ = wrk.communicate()
        print(bench.parse_wrk(output), "\n")
        top(raw)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
