"""Load for the serving benchmarks: POSTs one fixed body to a loopback URL from a second process.

Bounded in count and in time, and refused for any host but loopback. Closed loop by default
(`concurrency` requests in flight, each sent when the last one answered: throughput); with
`rate` an open loop paced at that many requests per second (latency at a steady, known load).
Every request is recorded (wall start, seconds, status, which bento answered) so the caller can
cut windows, e.g. the seconds around a traffic switch.

Run as `python -m bench.load --url ... --body FILE --out FILE ...`; use `start_load`/`finish`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Requests:
    """Per-request arrays of one load run (status 0: no HTTP answer at all)."""

    start: np.ndarray  # wall-clock seconds
    seconds: np.ndarray
    status: np.ndarray
    bento: list[str]  # the answering bento per request ("" when none)
    wall_s: float
    errors: dict[str, int] = field(default_factory=dict)  # failures by kind
    cpu_s: float = 0.0  # CPU the load process itself used

    def cpu_ms_per_request(self) -> float | None:
        """The load's own cost per request: what it took from the cores the servers share."""
        n = len(self.status)
        return round(self.cpu_s / n * 1000, 3) if n else None

    def describe_failures(self) -> str:
        """What went wrong, for an assertion message: counts by status or exception."""
        return ", ".join(f"{kind}: {n}" for kind, n in sorted(self.errors.items())) or "none"

    def window(self, since: float, until: float) -> Requests:
        keep = (self.start >= since) & (self.start < until)
        bento = [b for b, k in zip(self.bento, keep, strict=True) if k]
        return Requests(self.start[keep], self.seconds[keep], self.status[keep], bento, 0.0)

    @property
    def failed(self) -> int:
        return int((self.status != 200).sum())

    def percentile_ms(self, q: float) -> float | None:
        ok = self.seconds[self.status == 200]
        return None if not len(ok) else round(float(np.percentile(ok, q)) * 1000, 2)

    def per_second(self) -> float:
        return float((self.status == 200).sum()) / self.wall_s if self.wall_s else 0.0


def start_load(
    url: str,
    body: bytes,
    out: Path,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    rate: float | None = None,
) -> subprocess.Popen:
    """Start the load process; it stops by itself at `max_requests` or `max_seconds`."""
    if urlsplit(url).hostname not in LOOPBACK:
        raise ValueError(f"load goes to loopback only, not {url}")
    body_file = out.with_suffix(".body.json")
    body_file.write_bytes(body)
    args = [
        sys.executable,
        "-m",
        "bench.load",
        "--url",
        url,
        "--body",
        str(body_file),
        "--out",
        str(out),
        "--concurrency",
        str(concurrency),
        "--max-requests",
        str(max_requests),
        "--max-seconds",
        str(max_seconds),
    ]
    if rate:
        args += ["--rate", str(rate)]
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(args, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, out: Path, timeout: float, stop: bool = False) -> Requests:
    """Wait for the load process (it is bounded; `timeout` is a safety net) and read its log.

    With `stop`, tell it to stop sending now (SIGTERM to this one process, by its pid).
    """
    if stop:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"load process failed: {err.decode()[-2000:]}")
    data = json.loads(out.read_text())
    names = data["bentos"]
    return Requests(
        start=np.asarray(data["start"]),
        seconds=np.asarray(data["seconds"]),
        status=np.asarray(data["status"]),
        bento=[names[i] if i >= 0 else "" for i in data["bento"]],
        wall_s=data["wall_s"],
        errors=data.get("errors", {}),
        cpu_s=data.get("cpu_s", 0.0),
    )


def run(url: str, body: bytes, out: Path, args: argparse.Namespace) -> None:
    log: dict[str, list] = {"start": [], "seconds": [], "status": [], "bento": []}
    errors: dict[str, int] = {}
    names: dict[str, int] = {}
    began = time.monotonic()
    deadline = began + args.max_seconds
    stopping = False  # SIGTERM: stop sending, let requests in flight finish, write the log

    async def one(client, sem: asyncio.Semaphore | None) -> None:
        t0_wall, t0 = time.time(), time.perf_counter()
        status, who = 0, -1
        try:
            async with client.post(url, data=body) as response:
                status = response.status
                answer = await response.read()
            if status == 200:
                name = json.loads(answer).get("bento", "")
                who = names.setdefault(name, len(names))
            else:
                kind = f"HTTP {status}"
                errors[kind] = errors.get(kind, 0) + 1
        except Exception as exc:  # a refused or reset connection is a failed request, not a crash
            status = 0
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        log["start"].append(t0_wall)
        log["seconds"].append(time.perf_counter() - t0)
        log["status"].append(status)
        log["bento"].append(who)
        if sem is not None:
            sem.release()

    async def closed(client) -> None:
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while sent < args.max_requests and time.monotonic() < deadline and not stopping:
                sent += 1
                await one(client, None)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    async def paced(client) -> None:
        sem, tasks = asyncio.Semaphore(args.concurrency), []
        for i in range(args.max_requests):
            due = began + i / args.rate
            if due >= deadline or stopping:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await sem.acquire()
            tasks.append(asyncio.create_task(one(client, sem)))
        await asyncio.gather(*tasks)

    async def main() -> None:
        import aiohttp  # a lighter client than httpx: less of the shared cores goes to the load

        def stop() -> None:
            nonlocal stopping
            stopping = True

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        headers = {"content-type": "application/json"}
        token = os.environ.get("DRIFTLOOP_CAPTURE_TOKEN", "").strip()  # the endpoints' token
        if token:
            headers["authorization"] = f"Bearer {token}"
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers
        ) as client:
            await (paced(client) if args.rate else closed(client))

    cpu_began = time.process_time()
    asyncio.run(main())
    wall_s, bentos = time.monotonic() - began, sorted(names, key=names.get)
    cpu_s = time.process_time() - cpu_began  # what the load itself took of the shared cores
    summary = {"wall_s": wall_s, "cpu_s": cpu_s, "bentos": bentos, "errors": errors}
    out.write_text(json.dumps({**log, **summary}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=None, help="requests/s (open loop)")
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in LOOPBACK:
        raise SystemExit(f"load goes to loopback only, not {args.url}")
    run(args.url, args.body.read_bytes(), args.out, args)


if __name__ == "__main__":
    main()
