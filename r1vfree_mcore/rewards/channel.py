"""Rendezvous and authentication of the policy <-> reward channel.

Global rank 0 hosts a ``torch.distributed.TCPStore`` at ``MASTER_PORT + 2``. Each reward rank
binds a ``multiprocessing.connection.Listener`` on a free port and publishes
``{host, port, pid, rank}`` under ``reward_rank/<replica>``; policy ranks look it up and connect.
Messages are pickled tuples. The authkey is ``R1V_REWARD_SECRET`` when set, else a hash of the
launch's identity (MASTER_ADDR/PORT and the Slurm/torchrun job id), so stray processes of other
jobs cannot connect by accident. Set ``R1V_REWARD_SECRET`` on shared clusters.

The published host is ``rewards.advertise_host``, else env ``R1V_REWARD_HOST``, else 127.0.0.1
when MASTER_ADDR is local, else this node's FQDN (routable across nodes).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import timedelta

from r1vfree_mcore.rewards.topology import RewardTopology

_LOCAL = {"127.0.0.1", "localhost", "::1"}


class RewardRankError(RuntimeError):
    """A reward rank died, hung (no heartbeat) or could not be reached; names rank and host."""


def authkey(topo: RewardTopology) -> bytes:
    """Shared secret of this launch (see module docstring)."""
    secret = os.environ.get("R1V_REWARD_SECRET")
    if secret:
        return secret.encode()
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or ""
    return hashlib.sha256(f"r1vfree-rewards:{topo.master_addr}:{topo.master_port}:{job}".encode()).digest()


def advertise_host(topo: RewardTopology, configured: str | None = None) -> str:
    """The hostname/IP a reward rank publishes for policy ranks to connect to."""
    host = configured or os.environ.get("R1V_REWARD_HOST")
    if host:
        return host
    return "127.0.0.1" if topo.master_addr in _LOCAL else socket.getfqdn()


def bind_address(host: str) -> str:
    """Loopback when advertising loopback (tests, one node), else all interfaces."""
    return "127.0.0.1" if host in _LOCAL else "0.0.0.0"


_STORES: dict[tuple, object] = {}


def open_store(topo: RewardTopology, timeout_s: float):
    """The rendezvous TCPStore (server on global rank 0, client elsewhere).

    Cached per process: global rank 0 must keep hosting it for the whole run, and a second
    server on the same port would fail.
    """
    from torch.distributed import TCPStore

    key = (topo.master_addr, topo.master_port + 2, topo.rank)
    if key not in _STORES:
        _STORES[key] = TCPStore(
            topo.master_addr,
            topo.master_port + 2,
            world_size=topo.world_size,
            is_master=topo.rank == 0,
            timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False,
        )
    return _STORES[key]


def store_key(replica: int) -> str:
    """Where reward replica ``replica`` publishes its address."""
    return f"reward_rank/{replica}"


def publish(store, replica: int, info: dict) -> None:
    """Publish a reward rank's address (JSON)."""
    store.set(store_key(replica), json.dumps(info))


def lookup(store, topo: RewardTopology, replica: int, timeout_s: float) -> dict:
    """Wait for and read reward replica ``replica``'s address."""
    key = store_key(replica)
    try:
        store.wait([key], timedelta(seconds=timeout_s))
    except Exception as exc:
        raise RewardRankError(
            f"reward rank {topo.global_rank_of(replica)} (replica {replica}) did not publish its address "
            f"within rewards.connect_timeout_s={timeout_s:.0f}s: {exc}"
        ) from exc
    return json.loads(store.get(key))
