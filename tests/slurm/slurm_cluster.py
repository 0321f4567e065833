#!/usr/bin/env python3
"""A private two-node Slurm cluster on this machine, for the tests of slurm/ (and by hand).

Debian's Slurm is built with MULTIPLE_SLURMD, so two ``slurmd`` daemons on one host act as nodes
``n1`` and ``n2`` (both 127.0.0.1, distinct ports). munged, slurmctld and the slurmds keep all
their state, sockets, pid files and logs in one directory; ``/etc/hosts`` gets one marked line so
``n1``/``n2`` resolve (removed again by ``down``). Only the commands below need root.

By hand::

    python tests/slurm/slurm_cluster.py up --dir /tmp/r1v-slurm  # prints `export SLURM_CONF=...`
    export SLURM_CONF=/tmp/r1v-slurm/etc/slurm.conf; sinfo; sbatch ...
    python tests/slurm/slurm_cluster.py down --dir /tmp/r1v-slurm

Stdlib only, so it runs without the project venv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODES = ("n1", "n2")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo")
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# r1vfree-slurm-test"


class SlurmUnavailable(RuntimeError):
    """Slurm is not installed and cannot be installed here (the reason is the message)."""


def _run(cmd: list[str], timeout: float, env: dict | None = None, check: bool = True):
    """Run a command with a hard timeout; raise with its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ensure_installed(timeout: float = 300) -> None:
    """Install the Debian Slurm packages when missing (root only); raise SlurmUnavailable if not."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm is not installed and we are not root (cannot apt-get it)")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm is not installed and apt-get is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _run(["apt-get", "update", "-qq"], timeout, env)
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
        _run(install, timeout, env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise SlurmUnavailable(f"apt-get install of Slurm failed: {exc}") from exc
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise SlurmUnavailable(f"Slurm installed but binaries are missing: {missing}")


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _cgroup_v1_freezer() -> bool:
    """proctrack/cgroup (kills every process of a job) needs the v1 freezer controller here."""
    return Path("/sys/fs/cgroup/freezer").is_dir()


class SlurmCluster:
    """munged + slurmctld + one slurmd per node, all state under ``state_dir``."""

    def __init__(self, state_dir: str | Path, nodes: tuple[str, ...] = NODES):
        self.dir = Path(state_dir).resolve()
        self.nodes = nodes
        self.conf = self.dir / "etc" / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.proctrack = "cgroup" if _cgroup_v1_freezer() else "linuxproc"

    # -- environment for clients ------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF pointing at this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def _client(self, *cmd: str, timeout: float = 20, check: bool = True):
        return _run(list(cmd), timeout, self.env(), check)

    # -- start -------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        """Start every daemon and wait until all nodes are idle (falls back to linuxproc)."""
        for sub in ("etc", "munge", "ctld", "log", "tmp", *(f"spool/{n}" for n in self.nodes)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._add_hosts_entry()
        self._start_munge()
        try:
            self._start_slurm(timeout)
        except RuntimeError:
            if self.proctrack != "cgroup":
                raise
            # cgroup tracking is the better choice but not every kernel/container allows it.
            self._stop_slurm_daemons()
            self.proctrack = "linuxproc"
            self._start_slurm(timeout)

    def _start_munge(self) -> None:
        mdir = self.dir / "munge"
        mdir.chmod(0o755)  # munged insists its socket directory is not writable by others
        key = mdir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        _run(
            [
                "munged", f"--key-file={key}", f"--socket={self.munge_socket}",
                f"--pid-file={mdir / 'munged.pid'}", f"--log-file={mdir / 'munged.log'}",
                f"--seed-file={mdir / 'munged.seed'}", "--force",
            ],
            timeout=20,
        )
        _wait(lambda: self.munge_socket.exists(), 10, "munged socket")

    def _write_conf(self) -> None:
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        cpus = min(2, os.cpu_count() or 1)
        d = self.dir
        lines = [
            "ClusterName=r1vtest",
            f"SlurmctldHost={socket.gethostname()}",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"StateSaveLocation={d / 'ctld'}",
            f"SlurmdSpoolDir={d / 'spool'}/%n",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d}/slurmd-%n.pid",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log'}/slurmd-%n.log",
            f"TmpFS={d / 'tmp'}",
            f"ProctrackType=proctrack/{self.proctrack}",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "SlurmdTimeout=30",
            "ReturnToService=2",
            "KillWait=5",
            "MinJobAge=600",
            *(
                f"NodeName={n} NodeAddr=127.0.0.1 Port={p} CPUs={cpus} State=UNKNOWN"
                for n, p in zip(self.nodes, node_ports)
            ),
            f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE "
            "State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (self.conf.parent / "cgroup.conf").write_text(
            "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n"
        )

    def _start_slurm(self, timeout: float) -> None:
        self._write_conf()
        _run(["slurmctld", "-f", str(self.conf), "-c"], 30, self.env())
        _wait(lambda: self._client("scontrol", "ping", check=False).returncode == 0, 20,
              "slurmctld to answer")
        for node in self.nodes:
            _run(["slurmd", "-f", str(self.conf), "-N", node], 30, self.env())
        try:
            _wait(self._all_idle, timeout, f"nodes {self.nodes} to be idle")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; logs in {self.dir / 'log'}") from exc

    def _all_idle(self) -> bool:
        out = self._client("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n) == "idle" for n in self.nodes)

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, stop every daemon started here, remove the /etc/hosts line."""
        if self.conf.exists() and _pid_alive(self.dir / "slurmctld.pid"):
            self._client("scancel", "--full", "--user=root", check=False)
            try:
                _wait(lambda: not self._client("squeue", "-h", check=False).stdout.strip(),
                      30, "jobs to end")
            except RuntimeError as exc:
                print(f"slurm_cluster: warning: {exc}", file=sys.stderr)
        self._stop_slurm_daemons()
        _kill_pidfile(self.dir / "munge" / "munged.pid")
        self._remove_hosts_entry()
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        """Remove the (now empty) per-node cgroup trees proctrack/cgroup left behind."""
        for node in self.nodes:
            for top in Path("/sys/fs/cgroup").glob(f"*/slurm_{node}"):
                for sub in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        _rmdir_quietly(sub)
                _rmdir_quietly(top)

    def _stop_slurm_daemons(self) -> None:
        for node in self.nodes:
            _kill_pidfile(self.dir / f"slurmd-{node}.pid")
        _kill_pidfile(self.dir / "slurmctld.pid")
        # slurmstepd daemons of jobs that outlived slurmd chdir into our spool directory.
        for pid in _pids_with_cwd_under(self.dir):
            _terminate(pid)

    # -- /etc/hosts --------------------------------------------------------------------------
    def _add_hosts_entry(self) -> None:
        text = HOSTS_FILE.read_text()
        if HOSTS_MARK not in text:
            sep = "" if text.endswith("\n") else "\n"
            # /etc/hosts is often a bind mount: rewrite in place, never replace the file.
            with HOSTS_FILE.open("a") as fh:
                fh.write(f"{sep}127.0.0.1 {' '.join(self.nodes)} {HOSTS_MARK}\n")

    def _remove_hosts_entry(self) -> None:
        lines = HOSTS_FILE.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines if HOSTS_MARK not in ln]
        if kept != lines:
            with HOSTS_FILE.open("w") as fh:
                fh.writelines(kept)


def _wait(pred, timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()  # cgroup directories vanish with rmdir; one still in use stays
    except OSError:
        pass


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pidfile: Path) -> bool:
    pid = _read_pid(pidfile)
    return pid is not None and Path(f"/proc/{pid}").exists()


def _terminate(pid: int, timeout: float = 10) -> None:
    """SIGTERM one process by id, SIGKILL it if it is still there after ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        _wait(lambda: not Path(f"/proc/{pid}").exists() or _is_zombie(pid), timeout, f"pid {pid}")
    except RuntimeError:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _kill_pidfile(pidfile: Path) -> None:
    pid = _read_pid(pidfile)
    if pid is not None:
        _terminate(pid)
    pidfile.unlink(missing_ok=True)


def _pids_with_cwd_under(root: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if Path(os.readlink(proc / "cwd")).is_relative_to(root):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", required=True, help="state directory of the cluster")
    args = parser.parse_args(argv)
    cluster = SlurmCluster(args.dir)
    if args.action == "down":
        cluster.stop()
        return 0
    try:
        ensure_installed()
        cluster.start()
    except SlurmUnavailable as exc:
        print(f"slurm_cluster: unavailable: {exc}", file=sys.stderr)
        return 2
    except Exception:
        cluster.stop()
        raise
    print(f"export SLURM_CONF={cluster.conf}  # proctrack/{cluster.proctrack}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
