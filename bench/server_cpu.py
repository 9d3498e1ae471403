"""CPU seconds used by the server listening on a loopback port, with all its processes.

On a shared two-core machine throughput moves with whatever else runs, but the CPU a server
spends per request hardly does: it is what bounds the server's throughput when it has the cores
to itself. The serving benchmark reports both.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port` (state 0A) in /proc/net/tcp and tcp6."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    return inodes


def listeners(port: int) -> set[int]:
    """Pids holding a socket that listens on `port`."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    found: set[int] = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if links & wanted:
            found.add(int(entry.name))
    return found


def server_pids(port: int) -> set[int]:
    """The processes holding the listening socket (BentoML's arbiter hands it to its workers)
    and all their descendants; never their parents, which may be the whole stack's supervisor."""
    stats = {
        int(e.name): s for e in PROC.iterdir() if e.name.isdigit() and (s := _stat(int(e.name)))
    }
    tree, grew = listeners(port), True
    while grew:
        children = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return tree - {os.getpid()}


def cpu_seconds(pids: set[int]) -> float:
    """CPU seconds used so far by the processes still alive among `pids`."""
    return sum(s[1] for pid in pids if (s := _stat(pid)))
