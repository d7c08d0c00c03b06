"""A node's GPUs as a pool: `./run_pipeline.sh <preset> --gpus N` runs N runs of the preset at once, one per GPU.

Each run is what one task of the preset's SLURM arrays runs (slurm/submit_preset.sh): its stage's script with the
sweep flags of one (value, seed) (imdb_dpo/launch/sweep_tasks.py), in a process of its own that sees one GPU through
CUDA_VISIBLE_DEVICES, so its lock, resume, skip and manifest are the script's own. A stage without a sweep is one
run. The order is list scheduling: whenever a GPU frees, the first run (in the preset's stage order) whose stages it
waits for have all finished starts on it. `wall_clock` simulates that very policy (`ListSchedule`), so the plan's
wall-clock figure and the runner cannot disagree on the order.

A run that fails is named with its log and does not stop the others; the runs that wait for its stage are not
started. SIGTERM and SIGUSR1 are passed on to every running run (each saves and exits 75); a Ctrl-C reaches them from
the terminal. No new run starts after either, and the pipeline then exits 75: the same command goes on.
"""

import heapq
import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

from imdb_dpo.configuration.arguments import strict_yaml
from imdb_dpo.configuration.errors import UserError
from imdb_dpo.methods import registry
from imdb_dpo.launch.pipeline import REPOSITORY, command_line, stages
from imdb_dpo.lifecycle.preemption import EXIT_RESUMABLE
from imdb_dpo.launch.sweep_tasks import flags, tasks

ALLOW_CPU_VARIABLE = "IMDB_DPO_ALLOW_CPU_GPUS"  # =1: --gpus N runs N CPU processes (for tests on CPU machines)

BEFORE_METHODS = {"sft": ("base",), "preference_pairs": ("sft",)}  # the stages each of these reads


def needs_of(stage: str) -> tuple[str, ...]:
    """The stages `stage` reads the outputs of: a method's `needs`; its runs wait for their shared pass, if any."""
    if stage in BEFORE_METHODS:
        return BEFORE_METHODS[stage]
    shared = {shared_stage(m): m for m in registry().values() if m.shared_pass}
    if stage in shared:
        return shared[stage].needs
    m = registry().get(stage)
    if m is None:
        return ()
    return (shared_stage(m),) if m.shared_pass else m.needs


def shared_stage(method) -> str:
    """The stage name of the pass a method's runs share (DPO's cached reference log-probs: dpo_reference)."""
    return f"{method.key}_{method.shared_pass_name}"


POLL_SECONDS = 0.2


def waits_for(stage: str, present: list[str]) -> tuple[str, ...]:
    """The stages of `present` that `stage` must wait for: its inputs' stages, or where the preset lacks one (its
    outputs are already on disk, or the stage fails on its own), what that one would have waited for."""
    if stage == "eval":
        return tuple(s for s in present if s != "eval")
    needs = []
    for need in needs_of(stage):
        needs += [need] if need in present else waits_for(need, present)
    return tuple(dict.fromkeys(needs))


class ListSchedule:
    """The one policy the runner and `wall_clock` share: jobs are (stage, stages it waits for) in stage order, and
    the next job to start is the first pending one whose stages have all finished. A job waiting on a stage with a
    failed (or never started) job is never started."""

    def __init__(self, jobs: list[tuple[str, tuple[str, ...]]]):
        self.jobs = jobs
        self.pending = list(range(len(jobs)))
        self.unfinished = Counter(stage for stage, _ in jobs)
        self.failed: set[str] = set()

    def next_ready(self) -> int | None:
        """The index of the job to start now (it leaves the pending list), or None when none can start yet."""
        for i in self.pending:
            needs = self.jobs[i][1]
            if all(self.unfinished[s] == 0 and s not in self.failed for s in needs):
                self.pending.remove(i)
                return i
        return None

    def done(self, i: int, ok: bool = True) -> None:
        stage = self.jobs[i][0]
        self.unfinished[stage] -= 1
        if not ok:
            self.failed.add(stage)

    def blocked(self) -> list[int]:
        """The pending jobs that wait (through any chain) on a failed stage: they leave the pending list, unstarted."""
        out = []
        for i in list(self.pending):  # stage order: a blocked job's stage blocks the later ones that wait for it
            if any(s in self.failed for s in self.jobs[i][1]):
                self.pending.remove(i)
                self.done(i, ok=False)
                out.append(i)
        return out


def wall_clock(jobs, gpus: int) -> float:
    """Seconds from the first start to the last finish of `jobs` on `gpus` GPUs under the runner's policy.

    `jobs`: (stage, seconds, stages it waits for) tuples in stage order, one per run (a sweep's runs share their
    stage's name); a job starts once every job of each stage it waits for has finished (a stage no job has counts as
    finished). `waits_for(stage, present)` gives those stages for a preset. Jobs ending at the same moment all free
    their GPUs before the next ones start."""
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus={gpus!r}: a whole number >= 1")
    jobs = list(jobs)
    schedule = ListSchedule([(stage, tuple(needs)) for stage, _, needs in jobs])
    now, running = 0.0, []  # heap of (finish time, job)
    while True:
        while len(running) < gpus and (i := schedule.next_ready()) is not None:
            heapq.heappush(running, (now + float(jobs[i][1]), i))
        if not running:
            break
        now = running[0][0]
        while running and running[0][0] == now:
            schedule.done(heapq.heappop(running)[1])
    if schedule.pending:
        stuck = sorted({jobs[i][0] for i in schedule.pending})
        raise ValueError(f"jobs of {', '.join(stuck)} wait for each other: no order runs them")
    return now


@dataclass(frozen=True)
class Run:
    """One process of the preset: a stage's script with one task's sweep flags (none for a stage without a sweep)."""
    stage: str                    # a stage of pipeline.stages(), or a method's shared pass
    config: str                   # the stage's config file
    field: str | None             # the sweep's list (sweep_tasks: betas, kl_coefs, alphas, - for seeds alone)
    flags: tuple[str, ...]        # e.g. ("--betas", "0.1", "--seeds", "2")
    command: tuple[str, ...]      # the whole command line
    waits_for: tuple[str, ...]    # the stages whose runs must all finish first
    shared_pass_of: str = ""      # the method whose runs share this run's pass ("": a run of its own stage)

    @property
    def label(self) -> str:
        return " ".join((self.stage, *self.flags))

    @property
    def log_name(self) -> str:
        # "--betas 0.1 --seeds 2" -> dpo_beta0.1_seed2.log
        parts = [f"{name[2:].removesuffix('s')}{value}" for name, value in zip(self.flags[::2], self.flags[1::2])]
        return "_".join((self.stage, *parts)) + ".log"


def preset_runs(configs: str) -> list[Run]:
    """Every run of the preset in `configs`, in stage order (a method's runs one per task of its sweep, in
    sweep_tasks' order). Raises a UserError for a config whose sweep cannot be read."""
    present = [stage for stage, _ in stages() if os.path.isfile(os.path.join(configs, f"{stage}.yaml"))]
    runs = []
    for stage, command in stages():
        if stage not in present:
            continue
        config = os.path.join(configs, f"{stage}.yaml")
        method = registry().get(stage)
        field = method.sweep if method else None
        task_flags = [tuple(flags(field, *task).split()) for task in tasks(config, field)] if field else [()]
        if method and method.shared_pass:
            settings = strict_yaml(config) or {}
            if len(task_flags) > 1 and isinstance(settings, dict) and method.shares_pass(settings):
                shared = shared_stage(method)
                present.insert(present.index(stage), shared)
                runs.append(Run(shared, config, None, (), (*command_line(command, config), *method.shared_pass),
                                waits_for(shared, present), shared_pass_of=stage))
        runs += [Run(stage, config, field, f, (*command_line(command, config), *f), waits_for(stage, present))
                 for f in task_flags]
    return runs


def parse_gpus(text: str) -> int:
    """--gpus' value, a whole number >= 1, or a UserError saying so."""
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        given = f"--gpus {text!r}" if text else "--gpus without a number"
        raise UserError(f"{given}: give the number of this node's GPUs to run runs on at once, a whole number "
                        ">= 1 (e.g. --gpus 8); leave --gpus out to run the stages one after another")
    return int(text)


def check_gpus(gpus: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each of the `gpus` slots, once this machine is seen to have that many GPUs
    (or ALLOW_CPU_VARIABLE=1 says to run CPU processes)."""
    import torch

    found = torch.cuda.device_count()
    if found < gpus and os.environ.get(ALLOW_CPU_VARIABLE) != "1":
        seen = f"{found} CUDA GPU{'s' * (found != 1)}" if found else "no CUDA GPU"
        fewer = f"give --gpus {found} or fewer, " if found else ""
        raise UserError(f"--gpus {gpus} asks for {gpus} GPUs, but torch.cuda.device_count() finds {seen} on this "
                        f"machine (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}): {fewer}run "
                        f"on a node with {gpus} GPUs (and PyTorch's CUDA build, README.md, \"The real run\"), or leave "
                        f"--gpus out to run the stages one after another. (Tests on a CPU machine set "
                        f"{ALLOW_CPU_VARIABLE}=1 to run {gpus} CPU processes instead.)")
    # Under SLURM (or any launcher) the node's GPUs may already be narrowed: slot i is the i-th one it left visible.
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[:gpus] if len(visible) >= gpus else [str(i) for i in range(gpus)]


@dataclass
class Started:
    index: int  # the run's place in the schedule
    run: Run
    device: str
    process: subprocess.Popen
    log: str
    started: float


def say(line: str) -> None:
    print(f"== {time.strftime('%H:%M:%S')} {line}", flush=True)


def last_error(path: str) -> str:
    """What a failed run's log ends with: a stage's user error (its last `error:` line, before the --debug hint), else
    the last line (a traceback's exception)."""
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f.read()[-20000:].splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(the log is empty)"])[-1]


def start(index: int, run: Run, device: str, logs: str) -> Started:
    log = os.path.join(logs, run.log_name)
    with open(log, "a") as f:  # appended: a resumed run's log keeps its earlier attempts, as SLURM's --open-mode=append
        f.write(f"CUDA_VISIBLE_DEVICES={device}\n{time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(run.command)}\n")
        f.flush()
        process = subprocess.Popen(run.command, cwd=REPOSITORY, stdin=subprocess.DEVNULL, stdout=f,
                                   stderr=subprocess.STDOUT,
                                   env={**os.environ, "CUDA_VISIBLE_DEVICES": device, "PYTHONUNBUFFERED": "1"})
    say(f"{run.label}: started on GPU {device} (pid {process.pid}); log {log}")
    return Started(index, run, device, process, log, time.monotonic())


def exit_status(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


class Pool:
    """The runner: the preset's runs on `devices` (CUDA_VISIBLE_DEVICES values), one at a time on each."""

    def __init__(self, runs: list[Run], devices: list[str], logs: str):
        self.runs, self.free, self.logs = runs, list(devices), logs
        self.schedule = ListSchedule([(r.stage, r.waits_for) for r in runs])
        self.running: list[Started] = []
        self.stopping, self.stop_signal = False, None
        self.finished, self.failed, self.stopped, self.blocked = [], [], [], []

    def on_signal(self, signum, frame) -> None:
        if signum != signal.SIGINT:  # a Ctrl-C reaches every run from the terminal; a second one would stop it unsaved
            self.stop_signal = signum
            for started in self.running:
                started.process.send_signal(signum)
        if not self.stopping:
            say(f"{signal.Signals(signum).name}: the running runs save and stop; no new run starts")
        self.stopping = True

    def start_ready(self) -> None:
        if self.stopping:  # what has not started stays for the rerun, blocked or not
            return
        for i in self.schedule.blocked():
            run = self.runs[i]
            self.blocked.append(run)
            failed = ", ".join(s for s in run.waits_for if s in self.schedule.failed)
            say(f"{run.label}: not started: it needs {failed}, which did not finish")
        while self.free and not self.stopping and (i := self.schedule.next_ready()) is not None:
            self.running.append(start(i, self.runs[i], self.free.pop(0), self.logs))
            if self.stop_signal:  # it came while this run was starting, so on_signal did not see it
                self.running[-1].process.send_signal(self.stop_signal)

    def end(self, started: Started) -> None:
        code, seconds = started.process.returncode, time.monotonic() - started.started
        self.running.remove(started)
        self.free = sorted(self.free + [started.device], key=lambda d: (len(d), d))
        run = started.run
        self.schedule.done(started.index, ok=code == 0)
        if code == 0:
            self.finished.append(run)
            say(f"{run.label}: finished in {seconds:.0f} s (GPU {started.device})")
        elif code == EXIT_RESUMABLE or (self.stopping and (code < 0 or code == 130)):
            # Saved and asks to be started again (a stop file too: the node's time is up, so is ours), or killed by
            # the stop before it could save (a signal during its imports, a second Ctrl-C): a rerun resumes it.
            self.stopped.append(run)
            self.stopping = True
            say(f"{run.label}: stopped ({exit_status(code)}) after {seconds:.0f} s; the same command resumes it")
        else:
            self.failed.append((run, code, started.log))
            say(f"{run.label}: FAILED ({exit_status(code)}) after {seconds:.0f} s; log {started.log}: "
                f"{last_error(started.log)}")

    def run(self) -> int:
        self.start_ready()
        while self.running:
            ended = [s for s in self.running if s.process.poll() is not None]
            if not ended:
                time.sleep(POLL_SECONDS)
                continue
            for started in ended:
                self.end(started)
            self.start_ready()
        return self.report()

    def report(self) -> int:
        unstarted = [self.runs[i] for i in self.schedule.pending]
        counts = [f"{len(self.finished)} finished", f"{len(self.failed)} failed", f"{len(self.stopped)} stopped",
                  f"{len(self.blocked) + len(unstarted)} not started"]
        say(f"runs: {', '.join(counts)}")
        for run, code, log in self.failed:
            print(f"   failed: {run.label} ({exit_status(code)}): {log}")
        for run in self.blocked:
            print(f"   not started, as what it needs failed: {run.label}")
        if self.stopped or unstarted:
            print("   stopped: run the same command again to go on where it stopped")
        if self.failed:
            code = self.failed[0][1]
            return code if code > 0 else 128 - code
        return EXIT_RESUMABLE if self.stopped or unstarted else 0


def run_runs(runs: list[Run], devices: list[str], logs: str) -> int:
    """Run `runs` on `devices` (CUDA_VISIBLE_DEVICES values), passing SIGTERM and SIGUSR1 on to the running ones;
    the pipeline's exit status (Pool.report)."""
    os.makedirs(logs, exist_ok=True)
    pool = Pool(runs, devices, logs)
    signals = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    previous = {signum: signal.signal(signum, pool.on_signal) for signum in signals}
    try:
        return pool.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_pool(configs: str, preset: str, gpus: int) -> int:
    """Every run of the preset in `configs` on `gpus` GPUs, logged to $OUTPUT_ROOT/outputs/<preset>/logs/; the
    pipeline's exit status: 0 when every run finished, a failed run's status, else EXIT_RESUMABLE when stopped."""
    devices = check_gpus(gpus)
    runs = preset_runs(configs)
    logs = os.path.join(os.environ.get("OUTPUT_ROOT", REPOSITORY), "outputs", preset, "logs")
    started = time.monotonic()
    code = run_runs(runs, devices, logs)
    ended = "done" if code == 0 else f"ended (exit status {code})"
    print(f"== {ended} in {time.monotonic() - started:.0f} s; each run's log is in {logs}", flush=True)
    return code
