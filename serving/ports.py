"""Free loopback ports that every server we start can use.

multi-model-server 1.1.11 refuses ports of 32767 and above, and Linux hands
out ephemeral ports from 32768 up, so asking the OS for port 0 is not
enough: we pick from a range below 32767 ourselves and check it is free.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32000


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and we can bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port whose old connections sit in TIME_WAIT is free
        # to listen on again; one something listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", rng: random.Random | None = None) -> int:
    """A port in [20000, 32000) that is free on ``host`` right now."""
    pick = rng or random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(LOW, HIGH)
        if is_free(port, host):
            return port
    raise OSError("no free port found in 20000..32000 on " + host)
