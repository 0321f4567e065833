"""``serve_rewards``: the loop a reward rank runs instead of training.

Loads the configured backends once, publishes its address, accepts its policy ranks
(``topology.clients_of(replica)``), then answers ``("score", req_id, requests)`` messages in
arrival order with ``("result", req_id, RewardResult)`` or ``("error", req_id, kind, message)``.
A heartbeat thread sends ``("heartbeat", time)`` to every client each ``rewards.heartbeat_s``
so clients can tell a slow reward rank from a dead or frozen one. Returns when every client has
sent ``("shutdown",)`` or disconnected.

CLI (the same loop as a separate program): ``python -m r1vfree_mcore.rewards.server --config F``
with a JSON/YAML ``rewards`` mapping and the launch's RANK/WORLD_SIZE/MASTER_* environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import socket
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener

from r1vfree_mcore.rewards import channel
from r1vfree_mcore.rewards.config import RewardConfig
from r1vfree_mcore.rewards.scoring import RewardEngine, RewardFailureError
from r1vfree_mcore.rewards.topology import RewardTopology

log = logging.getLogger(__name__)


class _Peer:
    """One connected policy rank: its connection and a send lock (heartbeats share it)."""

    def __init__(self, conn, policy_rank: int):
        self.conn, self.policy_rank = conn, policy_rank
        self.lock = threading.Lock()
        self.open = True

    def send(self, msg) -> None:
        with self.lock:
            if not self.open:
                return
            try:
                self.conn.send(msg)
            except (OSError, EOFError, ValueError):
                self.open = False


def _reader(peer: _Peer, work: queue.Queue) -> None:
    """Forward a client's messages to the work queue; a closed connection counts as shutdown."""
    try:
        while True:
            msg = peer.conn.recv()
            if msg[0] == "shutdown":
                break
            work.put((peer, msg))
    except (EOFError, OSError):
        pass
    peer.open = False
    work.put((peer, ("closed",)))


def _acceptor(listener: Listener, n: int, work: queue.Queue, peers: list) -> None:
    while len(peers) < n:
        try:
            conn = listener.accept()
            hello = conn.recv()
        except (OSError, EOFError, AuthenticationError) as exc:  # e.g. a client with the wrong authkey
            log.warning("reward rank: rejected a connection: %s", exc)
            continue
        peer = _Peer(conn, int(hello[1]))
        peers.append(peer)
        peer.send(("hello", os.getpid(), socket.gethostname()))
        threading.Thread(target=_reader, args=(peer, work), daemon=True).start()


def _heartbeat(peers: list, period: float, stop: threading.Event) -> None:
    while not stop.wait(period):
        for p in list(peers):
            p.send(("heartbeat", time.time()))


def _answer(engine: RewardEngine, peer: _Peer, req_id: int, requests) -> None:
    try:
        peer.send(("result", req_id, engine.score(requests)))
    except RewardFailureError as exc:
        peer.send(("error", req_id, "RewardFailureError", str(exc)))
    except Exception as exc:  # any other bug is reported to the waiting policy rank, then re-raised
        peer.send(("error", req_id, type(exc).__name__, traceback.format_exc()))
        raise


def _select_local_gpu() -> None:
    """Reward ranks use the GPU of their LOCAL_RANK, like the policy ranks on the same node."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def serve_rewards(cfg: RewardConfig, topo: RewardTopology | None = None) -> None:
    """Serve rewards on this reward rank until all of its policy ranks shut down."""
    topo = topo or RewardTopology.from_env(cfg.num_reward_ranks)
    replica = topo.reward_index
    expected = topo.clients_of(replica)
    _select_local_gpu()
    engine = RewardEngine(cfg)  # models load before the address is published
    host = channel.advertise_host(topo, cfg.advertise_host)
    listener = Listener((channel.bind_address(host), 0), authkey=channel.authkey(topo))
    store = channel.open_store(topo, cfg.connect_timeout_s)
    port = listener.address[1]
    channel.publish(store, replica, {"host": host, "port": port, "pid": os.getpid(), "rank": topo.rank})
    log.info("reward rank %d (replica %d) serving %s on %s:%d", topo.rank, replica, expected, host, port)

    work: queue.Queue = queue.Queue()
    peers: list[_Peer] = []
    stop = threading.Event()
    threading.Thread(target=_acceptor, args=(listener, len(expected), work, peers), daemon=True).start()
    threading.Thread(target=_heartbeat, args=(peers, cfg.heartbeat_s, stop), daemon=True).start()
    closed, deadline = 0, time.monotonic() + cfg.connect_timeout_s
    try:
        while closed < len(expected):
            try:
                peer, msg = work.get(timeout=0.5)
            except queue.Empty:
                if len(peers) < len(expected) and time.monotonic() > deadline:
                    missing = sorted(set(expected) - {p.policy_rank for p in peers})
                    raise channel.RewardRankError(
                        f"reward rank {topo.rank}: policy ranks {missing} did not connect within "
                        f"rewards.connect_timeout_s={cfg.connect_timeout_s:.0f}s (every policy rank must "
                        "create its RewardClient)"
                    )
                continue
            if msg[0] == "closed":
                closed += 1
            elif msg[0] == "score":
                _answer(engine, peer, msg[1], msg[2])
            else:
                peer.send(("error", None, "ProtocolError", f"unknown message {msg[0]!r}"))
    finally:
        stop.set()
        listener.close()
        for p in peers:
            p.conn.close()


def main(argv=None) -> None:
    """CLI entry: serve rewards with the config in ``--config`` (JSON or YAML)."""
    import json

    p = argparse.ArgumentParser(description="Serve rewards on this reward rank.")
    p.add_argument("--config", required=True, help="JSON/YAML file with the rewards mapping")
    a = p.parse_args(argv)
    text = open(a.config).read()
    if a.config.endswith((".yaml", ".yml")):
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    else:
        d = json.loads(text)
    logging.basicConfig(level=logging.INFO)
    serve_rewards(RewardConfig.from_dict(d))


if __name__ == "__main__":
    main()
