"""Free TCP ports for single-machine rendezvous (tests, local runs, conversion workers).

Ports come from below the kernel's ephemeral range (Linux default 32768-60999): a port handed
out by ``bind(0)`` is ephemeral, and gloo opens many client connections whose ephemeral source
ports can take it before the store listens (EADDRINUSE). Ports are checked in runs of ``span``
because a trainer with reward ranks listens on MASTER_PORT, +1 and +2.
"""

from __future__ import annotations

import random
import socket

_LOW, _HIGH = 12000, 32000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 3, tries: int = 200) -> int:
    """A port ``p`` such that ``p .. p + span - 1`` were all free a moment ago on 127.0.0.1."""
    rng = random.SystemRandom()
    for _ in range(tries):
        base = rng.randrange(_LOW, _HIGH - span)
        if all(_bindable(base + i) for i in range(span)):
            return base
    raise RuntimeError(f"no run of {span} free TCP ports found in [{_LOW}, {_HIGH}) after {tries} tries")
