"""`failover demo` as a user runs it: two embedded origins behind the proxy, and traffic that
moves to the secondary when the primary fails.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import yaml

from tests.conftest import free_port
from tests.helpers import started


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# --- demo ------------------------------------------------------------------------------------


async def test_demo_moves_traffic_when_the_primary_fails(tmp_path: Path) -> None:
    port, primary, secondary = distinct_free_ports(3)
    args = ["--port", str(port), "--origin-ports", str(primary), str(secondary)]
    with started("demo", *args, "--log-level", "warning", cwd=tmp_path) as process:
        await process.wait_until_serving(port)

        printed = process.stdout
        config = yaml.safe_load(printed.split("Config:", 1)[1].split("\nThe proxy listens", 1)[0])
        assert [o["url"] for o in config["origins"]] == [
            f"http://127.0.0.1:{primary}",
            f"http://127.0.0.1:{secondary}",
        ]
        assert config["listen"]["port"] == port
        assert f"curl -X POST http://127.0.0.1:{primary}/_origin/mode/http5xx" in printed
        assert f"curl -X POST http://127.0.0.1:{primary}/_origin/mode/ok" in printed
        assert f"curl -s http://127.0.0.1:{port}/_failover/status" in printed

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = await client.get("/")
            assert response.status_code == 200
            assert response.headers["x-failover-origin"] == "primary"

            control = await client.post(f"http://127.0.0.1:{primary}/_origin/mode/http5xx")
            assert control.status_code == 200

            for _ in range(10):
                response = await client.get("/")
                assert response.status_code == 200
                assert response.headers["x-failover-origin"] == "secondary"

        process.popen.send_signal(signal.SIGINT)
        assert await process.wait_for_exit(5) == 0
        assert "Traceback" not in process.stderr
