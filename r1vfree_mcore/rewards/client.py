"""Policy side of the reward channel: ``RewardClient.submit`` -> handle; ``handle.result()``.

Non-blocking: ``submit`` pickles the requests to this rank's reward replica and returns; a
receiver thread collects results and heartbeats. ``result(timeout)`` blocks only for what is
not done yet and records that time as ``time/reward_wait`` (``time/reward_compute`` is the
reward side's scoring time), so overlap with the policy's own work shows in the metrics.

A reward rank that disconnects (died) or sends no heartbeat for ``rewards.dead_after_s``
(frozen host, network) fails every pending and future handle with :class:`RewardRankError`
naming its global rank, pid and host.
"""

from __future__ import annotations

import itertools
import threading
import time
from multiprocessing.connection import Client

from r1vfree_mcore.rewards import channel
from r1vfree_mcore.rewards.channel import RewardRankError
from r1vfree_mcore.rewards.config import RewardConfig
from r1vfree_mcore.rewards.local import LocalRewardScorer
from r1vfree_mcore.rewards.request import RewardRequest
from r1vfree_mcore.rewards.scoring import RewardFailureError, RewardResult
from r1vfree_mcore.rewards.topology import RewardTopology


class RemoteRewardHandle:
    """A batch in flight on a reward rank."""

    def __init__(self, req_id: int):
        self.req_id = req_id
        self._event = threading.Event()
        self._result: RewardResult | None = None
        self._error: BaseException | None = None

    def _set(self, result=None, error=None) -> None:
        if not self._event.is_set():
            self._result, self._error = result, error
            self._event.set()

    def done(self) -> bool:
        """True once a result or an error has arrived."""
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> RewardResult:
        """Block until scored (``TimeoutError`` after ``timeout`` s); adds ``time/reward_wait``.

        Raises RewardFailureError when too many samples failed on the reward rank, and
        RewardRankError when the reward rank died or stopped sending heartbeats.
        """
        t0 = time.perf_counter()
        if not self._event.wait(timeout):
            raise TimeoutError(f"reward request {self.req_id} not scored within {timeout}s")
        if self._error is not None:
            raise self._error
        self._result.timings["time/reward_wait"] = time.perf_counter() - t0
        return self._result


class RewardClient:
    """Connection of one policy rank to its reward replica (``rank % num_reward_ranks``)."""

    def __init__(self, cfg: RewardConfig, topo: RewardTopology | None = None):
        self.cfg = cfg
        self.topo = topo or RewardTopology.from_env(cfg.num_reward_ranks)
        if self.topo.is_reward_rank or self.topo.num_reward_ranks == 0:
            raise ValueError(f"RewardClient needs a policy rank and reward ranks; got {self.topo}")
        self.replica = self.topo.replica_for(self.topo.rank)
        self._store = channel.open_store(self.topo, cfg.connect_timeout_s)  # rank 0 hosts it: keep it
        info = channel.lookup(self._store, self.topo, self.replica, cfg.connect_timeout_s)
        self.where = (f"reward rank {info['rank']} (replica {self.replica}, pid {info['pid']}) "
                      f"on host {info['host']}:{info['port']}")
        try:
            self._conn = Client((info["host"], info["port"]), authkey=channel.authkey(self.topo))
            self._conn.send(("hello", self.topo.rank))
            if not self._conn.poll(cfg.connect_timeout_s):
                raise TimeoutError("no hello reply")
            self._conn.recv()
        except Exception as exc:
            raise RewardRankError(f"cannot connect to {self.where}: {type(exc).__name__}: {exc}") from exc
        self._send_lock = threading.Lock()
        self._pending: dict[int, RemoteRewardHandle] = {}
        self._ids = itertools.count()
        self._error: RewardRankError | None = None
        self._closing = False
        self._last_seen = time.monotonic()
        self._thread = threading.Thread(target=self._receive, name="reward-client", daemon=True)
        self._thread.start()

    def submit(self, requests: list[RewardRequest]) -> RemoteRewardHandle:
        """Send ``requests`` to the reward replica and return at once."""
        if self._error is not None:
            raise self._error
        handle = RemoteRewardHandle(next(self._ids))
        self._pending[handle.req_id] = handle
        try:
            with self._send_lock:
                self._conn.send(("score", handle.req_id, list(requests)))
        except (OSError, EOFError, ValueError) as exc:
            self._fail_all(f"send failed: {type(exc).__name__}: {exc}")
            raise self._error from exc
        return handle

    def _receive(self) -> None:
        while not self._closing:
            try:
                if not self._conn.poll(min(0.2, self.cfg.heartbeat_s)):
                    silent = time.monotonic() - self._last_seen
                    if silent > self.cfg.dead_after_s:
                        self._fail_all(f"sent no heartbeat for {silent:.1f}s (rewards.dead_after_s="
                                       f"{self.cfg.dead_after_s}); frozen or unreachable")
                        return
                    continue
                msg = self._conn.recv()
            except (EOFError, OSError) as exc:
                if not self._closing:
                    self._fail_all(f"closed the connection ({type(exc).__name__}): the process died")
                return
            self._last_seen = time.monotonic()
            if msg[0] == "result":
                self._resolve(msg[1], result=msg[2])
            elif msg[0] == "error":
                kind, text = msg[2], msg[3]
                err = RewardFailureError(text) if kind == "RewardFailureError" else RewardRankError(
                    f"{self.where} failed on request {msg[1]}: {kind}: {text}")
                self._resolve(msg[1], error=err)

    def _resolve(self, req_id, result=None, error=None) -> None:
        handle = self._pending.pop(req_id, None)
        if handle is not None:
            handle._set(result, error)

    def _fail_all(self, reason: str) -> None:
        self._error = RewardRankError(f"{self.where} {reason}")
        for h in list(self._pending.values()):
            h._set(error=self._error)
        self._pending.clear()

    def close(self) -> None:
        """Tell the reward rank this policy rank is done and close the connection."""
        self._closing = True
        try:
            with self._send_lock:
                self._conn.send(("shutdown",))
        except (OSError, EOFError, ValueError):
            pass  # the reward rank is already gone; nothing to tell it
        self._thread.join(timeout=2.0)
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_scorer(cfg: RewardConfig, topo: RewardTopology | None = None):
    """``LocalRewardScorer`` when ``cfg.num_reward_ranks == 0``, else a ``RewardClient``."""
    if cfg.num_reward_ranks == 0:
        return LocalRewardScorer(cfg)
    return RewardClient(cfg, topo)
