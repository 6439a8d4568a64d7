"""Resumable jobs: a job is a command whose output file marks it finished. A finished job is never run again, so
a killed benchmark continues where it stopped (a half-written run folder is removed and that run starts over);
`--only` selects jobs by tags (task, method, seed); `--jobs N` runs N at a time, each with its own thread count.
Every finished job's wall time goes to <work>/ledger.jsonl."""

import json
import os
import shlex
import shutil
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set

from ..errors import DiveUsageError
from ..experiment import python_env

SELECTOR_KEYS = ("task", "method", "seed")


class JobsFailed(RuntimeError):
    """Some jobs failed; the others finished and are kept."""


@dataclass
class Job:
    name: str  # unique in the work dir
    cmd: List[str]
    done: str  # the file that exists once the job has finished
    log: str
    tags: Dict[str, Set[str]] = field(default_factory=dict)  # selector key -> values; a job matches --only when
    #                                                        every value it carries is selected
    deps: List[str] = field(default_factory=list)  # names of jobs that must finish first
    clean: Optional[str] = None  # a folder a killed attempt leaves behind: removed before the job starts again
    after: Optional[Callable[[], None]] = None  # run once after the command succeeds, before `done` is checked

    @property
    def finished(self) -> bool:
        return os.path.exists(self.done)


def parse_only(items: Sequence[str]) -> Dict[str, Set[str]]:
    """['method=flyp,dive', 'seed=0'] -> {'method': {'flyp', 'dive'}, 'seed': {'0'}}."""
    out: Dict[str, Set[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or key not in SELECTOR_KEYS or not values:
            raise DiveUsageError(f"--only '{item}': expected KEY=V1,V2 with KEY one of {', '.join(SELECTOR_KEYS)}, "
                                 "e.g. --only method=flyp,dive --only seed=0")
        out.setdefault(key, set()).update(v for v in values.split(",") if v)
    return out


def selected(job: Job, only: Dict[str, Set[str]]) -> bool:
    return all(job.tags.get(key, set()) <= values for key, values in only.items())


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def fold_interrupted(work: str) -> List[dict]:
    """Append to <work>/sittings.jsonl a line for every sitting that has jobs in the ledger but never wrote its
    own line (killed): its wall time up to its last finished job, a lower bound. Returns the lines added."""
    ledger, sittings = (os.path.join(work, n) for n in ("ledger.jsonl", "sittings.jsonl"))
    if not os.path.isfile(ledger):
        return []
    ended = {s.get("started") for s in read_sittings(work)}
    open_ones: Dict[str, List[dict]] = {}
    for line in open(ledger):
        entry = json.loads(line)
        if entry.get("sitting") and entry["sitting"] not in ended:
            open_ones.setdefault(entry["sitting"], []).append(entry)
    added = []
    for started, entries in sorted(open_ones.items()):
        t0 = time.mktime(time.strptime(started, TIME_FORMAT))
        last = max(time.mktime(time.strptime(e["finished"], TIME_FORMAT)) for e in entries)
        added.append({"argv": None, "started": started, "wall_s": round(last - t0, 1), "ran": len(entries),
                      "jobs": entries[-1]["jobs"], "threads": entries[-1]["threads"],
                      "interrupted": True, "finished": time.strftime(TIME_FORMAT, time.localtime(last))})
    if added:
        with open(sittings, "a") as f:
            f.writelines(json.dumps(a) + "\n" for a in added)
    return added


def read_sittings(work: str) -> List[dict]:
    """The sittings' lines; a sitting folded as interrupted that then ended (a dry run beside it) counts once.
    A sitting that ran no job is not one: lines an older pipeline wrote for one (a dry run) are left out."""
    path = os.path.join(work, "sittings.jsonl")
    lines = [json.loads(x) for x in open(path)] if os.path.isfile(path) else []
    lines = [s for s in lines if s.get("ran") and not s.get("dry_run")]
    ended = {s.get("started") for s in lines if not s.get("interrupted")}
    return [s for s in lines if not (s.get("interrupted") and s.get("started") in ended)]


class Runner:
    def __init__(self, work: str, jobs: int = 1, threads: int = 1, only: Optional[Dict[str, Set[str]]] = None,
                 dry_run: bool = False, log=print, sitting: Optional[str] = None, build: Optional[str] = None):
        self.work, self.jobs, self.threads, self.only, self.dry_run = work, jobs, threads, only or {}, dry_run
        self.sitting = sitting  # this sitting's start time: its ledger lines carry it (see fold_interrupted)
        self.build = build  # the pre-trained model's weights fingerprint: its ledger lines carry it (the page)
        self.commands: List[str] = []  # every command of the plan, in order, run or reused (commands.sh)
        self.ran: List[str] = []  # jobs run by this process
        self.skipped: List[str] = []  # jobs left out by --only (or waiting on one)
        self.log = log
        os.makedirs(work, exist_ok=True)
        self.ledger = os.path.join(work, "ledger.jsonl")

    def env(self) -> dict:
        env = python_env()
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env

    def _run_one(self, job: Job) -> float:
        if job.clean and os.path.isdir(job.clean):
            shutil.rmtree(job.clean)  # a killed attempt: open_clip refuses an existing run folder
        os.makedirs(os.path.dirname(job.log), exist_ok=True)
        start = time.time()
        with open(job.log, "w") as log:
            result = subprocess.run(job.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env())
        if result.returncode == 0 and job.after:
            job.after()
        if result.returncode != 0 or not job.finished:
            tail = open(job.log, errors="replace").read()[-3000:]
            raise RuntimeError(f"job {job.name} failed ({result.returncode}); its log {job.log} ends:\n{tail}")
        seconds = time.time() - start
        with open(self.ledger, "a") as f:
            f.write(json.dumps({"job": job.name, "seconds": round(seconds, 1), "threads": self.threads,
                                "jobs": self.jobs, "finished": time.strftime(TIME_FORMAT), "sitting": self.sitting,
                                "model": self.build})
                    + "\n")
        return seconds

    def run(self, jobs: Sequence[Job]) -> None:
        """Run every selected, unfinished job, `self.jobs` at a time, each after its deps. A failure lets the
        others finish (nothing lost) and is raised at the end."""
        by_name = {j.name: j for j in jobs}  # a job planned twice (e.g. a paper row that is a grid point) runs once
        jobs = list(by_name.values())
        self.commands += [" ".join(shlex.quote(str(c)) for c in j.cmd) for j in jobs]
        todo = [j for j in jobs if not j.finished]
        for j in [j for j in todo if not selected(j, self.only)]:
            self.skipped.append(j.name)
        todo = [j for j in todo if selected(j, self.only)]
        if self.dry_run:
            self.log(f"[minibench] would run {len(todo)} job(s): " + ", ".join(j.name for j in todo))
            return
        errors, running = [], {}
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            while todo or running:
                blocked = {j.name for j in todo if any(d in by_name and not by_name[d].finished
                                                       and (d in self.skipped or d in errors) for d in j.deps)}
                for j in [j for j in todo if j.name in blocked]:
                    self.skipped.append(j.name)
                todo = [j for j in todo if j.name not in blocked]
                ready = [j for j in todo if all(d not in by_name or by_name[d].finished for d in j.deps)]
                for j in ready[: self.jobs - len(running)]:
                    todo.remove(j)
                    self.log(f"[minibench] start {j.name}")
                    running[pool.submit(self._run_one, j)] = j
                if not running:
                    break  # what is left waits on jobs that did not run
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    j = running.pop(fut)
                    try:
                        self.log(f"[minibench] done {j.name} ({fut.result():.0f} s)")
                        self.ran.append(j.name)
                    except Exception as e:  # noqa: BLE001 - reported after the others finish
                        errors.append(j.name)
                        self.log(f"[minibench] FAILED {j.name}: {e}")
        if errors:
            raise JobsFailed(f"{len(errors)} job(s) failed: {', '.join(errors)} (their logs are in {self.work}); "
                               "rerun the same command to retry them, finished jobs are kept")
