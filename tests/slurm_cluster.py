"""A real single-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd, started from
a configuration written to a temporary directory, and stopped by pid. Its node offers two GPUs as generic resources
(two device files that are not GPUs), so that the job scripts' per-GPU requests and SLURM's GPU variables
(SLURM_GPUS_ON_NODE, CUDA_VISIBLE_DEVICES) are exercised as on a GPU cluster; nothing uses CUDA. It also claims
16 cores and 1 TB of memory (config_overrides: slurmd reports the configured node), so that the job scripts' own
requests (8 cores and 64 GB a GPU) are accepted as a GPU node would accept them; nothing enforces them here."""

import os
import shutil
import signal
import socket
import subprocess
import time

SLURM_CONF = """\
ClusterName=imdbdpo-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=30
MinJobAge=600
OverTimeLimit=1
GresTypes=gpu
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
GRES_CONF = """\
AutoDetect=off
Name=gpu File=/dev/null
Name=gpu File=/dev/zero
"""
GPUS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: str):
        self.root = root
        self.pids: dict[str, int] = {}
        self.env = {**os.environ, "SLURM_CONF": os.path.join(root, "slurm.conf")}

    def start(self) -> "SlurmCluster":
        os.makedirs(os.path.join(self.root, "state"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "spool"), exist_ok=True)
        munge_dir = os.path.join(self.root, "munge")
        os.makedirs(munge_dir, mode=0o700, exist_ok=True)
        key = os.path.join(munge_dir, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        socket_path = os.path.join(munge_dir, "munge.socket")
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={socket_path}",
                        f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
                        f"--seed-file={munge_dir}/munged.seed"], check=True)
        self.pids["munged"] = self._read_pid(f"{munge_dir}/munged.pid")
        host = socket.gethostname().split(".")[0]
        with open(os.path.join(self.root, "gres.conf"), "w") as f:  # read from beside slurm.conf
            f.write(GRES_CONF)
        with open(self.env["SLURM_CONF"], "w") as f:
            f.write(SLURM_CONF.format(host=host, root=self.root, ctld_port=_free_port(), slurmd_port=_free_port(),
                                      munge_socket=socket_path, cpus=16))
        subprocess.run(["slurmctld", "-f", self.env["SLURM_CONF"]], check=True, env=self.env)
        self.pids["slurmctld"] = self._read_pid(f"{self.root}/slurmctld.pid")
        subprocess.run(["slurmd", "-f", self.env["SLURM_CONF"]], check=True, env=self.env)
        self.pids["slurmd"] = self._read_pid(f"{self.root}/slurmd.pid")
        deadline = time.time() + 60
        while "idle" not in self.run("sinfo", "-h", "-o", "%T").stdout:
            if time.time() > deadline:
                raise RuntimeError("the SLURM node never became idle:\n" + self.logs())
            time.sleep(0.5)
        return self

    @staticmethod
    def _read_pid(path: str) -> int:
        deadline = time.time() + 20
        while not (os.path.exists(path) and open(path).read().strip()):
            if time.time() > deadline:
                raise RuntimeError(f"no pid file {path}")
            time.sleep(0.1)
        return int(open(path).read().strip())

    def run(self, *command, check=False):
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check)

    def submit(self, *args, env=None) -> str:
        proc = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, check=True)
        return proc.stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", job_id).stdout
        fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
        return fields.get("JobState", "UNKNOWN")

    def wait(self, job_id: str, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.job_state(job_id)
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"):
                return state
            time.sleep(2)
        return "STILL_RUNNING"

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = os.path.join(self.root, name)
            if os.path.exists(path):
                parts.append(f"--- {name}\n" + open(path).read()[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + 15
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.kill(pid, signal.SIGKILL)


def slurm_installed() -> bool:
    return all(shutil.which(tool) for tool in ("munged", "slurmctld", "slurmd", "sbatch"))
