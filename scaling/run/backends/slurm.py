"""The Slurm backend: the runs of one `submit` as job arrays, through submitit.

What a Slurm user gets, and where it comes from:

- Parameters: the profile's `slurm:` section, the run's GPUs and the device become
  submitit's own parameter names (those of `submitit.slurm.slurm._make_sbatch_string`,
  the function whose signature submitit validates `update_parameters` against).
  `check_profile` validates them when the plan is made, so a misspelt key is a
  one-line SpecError that lists the valid ones, not a failure at submission.
- One task per GPU (one per rank on a CPU profile): a run of G GPUs on nodes of N
  is ceil(G/N) nodes x G/nodes tasks. Every task runs `slurm_job.TrainCall`; the training core
  reads SLURM_PROCID/SLURM_NTASKS/SLURM_JOB_NODELIST (scaling.train.distributed.detect_env).
- One `sbatch` per MaxArraySize runs: a job array's *index* must stay below the
  cluster's MaxArraySize (`scontrol show config`), and submitit numbers tasks from 0,
  so an array holds at most MaxArraySize runs. The profile's array_parallelism caps
  the runs of one submit running at once; with several chunks it is split between them.
- Requeue: `TrainCall` is a submitit `Checkpointable`. On submitit's preemption or
  time-out signal (USR2, `--signal=USR2@90`) the trainer checkpoints after its
  current step, then submitit's own handler calls `checkpoint()` (the same call: the
  run directory holds the state) and `scontrol requeue`s the job, at most
  `slurm.max_timeouts` times for time-outs. The requeued job resumes from the
  checkpoint into the same MLflow run (run directory + mlflow.json).
- SIGTERM alone (`scancel`, `scontrol requeue`) also checkpoints; the job then ends
  and the run stays resumable. A preemption sends SIGTERM and USR2 together, so after
  a SIGTERM the job waits `slurm_job.USR_SIGNAL_GRACE_S` for USR2 before deciding it was a cancel.
- Job ids per run in `<run_dir>/slurm.json`; `status` asks sacct through submitit's
  watcher, forced (a cached state is never trusted); `cancel` is `job.cancel()`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError
from submitit.slurm import slurm as _slurm

from scaling.errors import SpecError, SubmissionError
from scaling.run.backends.base import Context, Job, Outcome
from scaling.run.backends.slurm_job import TrainCall
from scaling.run.backends.slurm_state import (
    ACTIVE,
    FAILED_FOR_GOOD,
    check_tracking,
    current,
    histories,
    job_log_tail,
    just_submitted,
    record_job,
    record_of,
    scheduler_failure,
)
from scaling.rundir import FAILURE, RESULT, write_json
from scaling.sweep.cluster import ClusterProfile, SlurmConfig

# submitit parameter -> the profile field that sets it (`additional` may not set these).
OWNED = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "time": "time_min",
    "nodes": "gpus_per_run",
    "ntasks_per_node": "gpus_per_run",
    "gpus_per_node": "gpus_per_node",
    "num_gpus": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem": "mem_gb",
    "constraint": "constraint",
    "exclude": "exclude",
    "setup": "setup",
    "array_parallelism": "array_parallelism",
    "job_name": "the sweep name",
}


# ---------------------------------------------------------------------- parameters


def task_layout(profile: ClusterProfile, file: str | None = None) -> tuple[int, int]:
    """(nodes, tasks per node) of one run: one task per GPU, or per rank on a CPU."""
    per_run, per_node = profile.gpus_per_run, profile.gpus_per_node
    nodes = profile.nodes_per_run
    if per_run % nodes:
        raise SpecError(
            f"gpus_per_run={per_run} spans {nodes} nodes of {per_node}: use a multiple of "
            "gpus_per_node so every node runs the same number of tasks",
            file=file,
            key="gpus_per_run",
        )
    return nodes, per_run // nodes


def threads_per_task(profile: ClusterProfile, device: str) -> int | None:
    """CPU threads of each task: the profile's threads_per_run, else cpus_per_task."""
    if device != "cpu":
        return None
    return profile.threads_per_run or _config(profile).cpus_per_task


def executor_parameters(
    profile: ClusterProfile,
    device: str,
    *,
    sweep: str = "sweep",
    extra_env: Mapping[str, str] | None = None,
    file: str | None = None,
) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one run's job; SpecError when invalid."""
    cfg = _config(profile)
    nodes, tasks = task_layout(profile, file)
    exports = dict(extra_env or {})
    threads = threads_per_task(profile, device)
    if threads:
        exports["OMP_NUM_THREADS"] = str(threads)
    params: dict[str, Any] = {
        "job_name": f"scaling-{sweep}",
        "partition": cfg.partition,
        "account": cfg.account,
        "qos": cfg.qos,
        "time": cfg.time_min,
        "nodes": nodes,
        "ntasks_per_node": tasks,
        "gpus_per_node": tasks if device == "cuda" else None,
        "cpus_per_task": cfg.cpus_per_task,
        "mem": _slurm._convert_mem(cfg.mem_gb) if cfg.mem_gb else None,
        "constraint": cfg.constraint,
        "exclude": cfg.exclude,
        "setup": [
            *cfg.setup,
            *(f"export {k}={shlex.quote(v)}" for k, v in sorted(exports.items())),
        ],
        "array_parallelism": cfg.array_parallelism,
        "stderr_to_stdout": True,  # one log per task, tracebacks in place: run_dir/train.log
    }
    valid = set(_slurm._get_default_parameters())
    unknown = sorted(set(cfg.additional) - valid)
    if unknown:
        choices = ", ".join(sorted(valid - set(OWNED)))
        raise SpecError(
            f"unknown submitit parameter(s) {', '.join(unknown)}; valid: {choices}",
            file=file,
            key="slurm.additional",
        )
    owned = sorted(set(cfg.additional) & set(OWNED))
    if owned:
        fields = ", ".join(f"{k} (set by {OWNED[k]})" for k in owned)
        raise SpecError(
            f"set by the profile, not here: {fields}", file=file, key="slurm.additional"
        )
    params.update(cfg.additional)
    params = {k: v for k, v in params.items() if v is not None}
    try:  # submitit's own check of the values (what update_parameters does)
        _slurm._make_sbatch_string(command="true", folder="/nonexistent/%j", **params)
    except (TypeError, ValueError, AssertionError) as exc:
        raise SpecError(f"submitit rejects the parameters: {exc}", file=file, key="slurm") from None
    return params


def check_profile(profile: ClusterProfile, file: str | None = None) -> None:
    """Validate a Slurm profile when the plan is made (no Slurm needed); SpecError if bad."""
    if profile.backend != "slurm":
        return
    if profile.device == "auto":
        raise SpecError(
            "device: auto would be resolved on the submitting machine, not on the cluster's "
            "nodes; set device: cuda (or cpu)",
            file=file,
            key="device",
        )
    executor_parameters(profile, profile.device, file=file)
    if "%" in str(Path(profile.workdir).absolute()):
        # sbatch reads every % of --output as a pattern (%j, %t, %%), while submitit
        # reads the same folder literally: no escaping keeps both in one place.
        raise SpecError(
            f"{Path(profile.workdir).absolute()} has a '%', which Slurm reads as a filename "
            "pattern (%j, %t, ...): choose a workdir without one",
            file=file,
            key="workdir",
        )


def submitit_folder(ctx: Context) -> Path:
    """Where submitit keeps pickles, sbatch files and logs: one folder per job id."""
    return ctx.workdir / ctx.sweep / ".submitit" / "%j"


def sbatch_script(ctx: Context, runs: int, chunks: int = 1, python: str | None = None) -> str:
    """The sbatch file submitit writes for an array of `runs` runs, one of `chunks`
    arrays of a submit, without submitting anything (previews and golden tests)."""
    folder = submitit_folder(ctx)
    params = executor_parameters(ctx.profile, ctx.device, sweep=ctx.sweep, extra_env=ctx.extra_env)
    params["array_parallelism"] = array_parallelism(ctx.profile, chunks)
    if runs > 1:
        params["map_count"] = runs
    python = python or shlex.quote(sys.executable)
    # as SlurmExecutor._submitit_command_str
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _slurm._make_sbatch_string(command=command, folder=folder, **params)


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices run from 0 to MaxArraySize - 1)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SubmissionError(
            f"cannot read the Slurm configuration (scontrol show config): {exc}"
        ) from None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            return int(value.split()[0])
    return 1001  # Slurm's default


def array_parallelism(profile: ClusterProfile, chunks: int) -> int:
    """Runs of each array at once: the profile's cap on the whole submit, split evenly."""
    return max(1, _config(profile).array_parallelism // max(1, chunks))


def chunks(items: Sequence[Job], limit: int) -> list[Sequence[Job]]:
    """Consecutive groups of at most `limit` runs (MaxArraySize 0 disables arrays)."""
    size = max(1, limit)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _config(profile: ClusterProfile) -> SlurmConfig:
    return profile.slurm or SlurmConfig()


# ---------------------------------------------------------------------- the backend


class SlurmBackend:
    name = "slurm"

    def submit(self, jobs: Sequence[Job], ctx: Context) -> list[Outcome]:
        """Queue every run not already queued; return once Slurm has them (job ids printed)."""
        cfg = _config(ctx.profile)
        params = executor_parameters(
            ctx.profile, ctx.device, sweep=ctx.sweep, extra_env=ctx.extra_env
        )
        check_tracking(ctx.tracking_uri, cfg.partition)
        busy = self.reconcile(jobs, ctx)  # submit checked too; this closes the race
        outcomes, todo = [], []
        for job in jobs:
            if job.run_id in busy:
                outcomes.append(Outcome(job.run_id, "already-running", busy[job.run_id]))
            else:
                todo.append(job)
        groups = chunks(todo, max_array_size())
        parallel = array_parallelism(ctx.profile, len(groups))
        folder = submitit_folder(ctx)
        threads = threads_per_task(ctx.profile, ctx.device)
        tracking = (ctx.tracking_uri, ctx.experiment)
        for group in groups:
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.max_timeouts)
            executor.update_parameters(**{**params, "array_parallelism": parallel})
            calls = [TrainCall(str(j.run_dir), tracking, ctx.device, threads) for j in group]
            try:
                submitted = executor.submit_array(calls)
            except (FailedJobError, subprocess.SubprocessError, OSError) as exc:
                raise SubmissionError(f"sbatch failed: {str(exc).strip()}") from None
            for job, sjob in zip(group, submitted, strict=True):
                record_job(job.run_dir, sjob.job_id, folder)
                outcomes.append(Outcome(job.run_id, "submitted", f"slurm job {sjob.job_id}"))
            first, last = submitted[0].job_id, submitted[-1].job_id
            span = (
                first
                if len(submitted) == 1
                else f"{first} .. {last}, {min(parallel, len(group))} at once"
            )
            print(
                f"slurm: {len(group)} runs queued as job {span}; logs in {folder.parent}",
                file=sys.stderr,
                flush=True,
            )
        return outcomes

    def reconcile(self, jobs: Sequence[Job], ctx: Context) -> dict[str, str]:
        """Before anything is written: the runs a job of theirs has queued or running
        (run_id -> "slurm job <id> <STATE>"; `submit` leaves them untouched), and the
        scheduler's verdict on runs whose job died where the trainer could not say so
        (a host OUT_OF_MEMORY kill) written to failure.json, so that `submit` does not
        resume them into the same kill."""
        busy = {}
        known = histories([j.run_dir for j in jobs])  # one sacct for all
        for job in jobs:
            if not (history := known.get(job.run_id)):
                continue
            job_id, state, code = current(history)
            if state in ACTIVE or (state == "UNKNOWN" and just_submitted(job.run_dir)):
                busy[job.run_id] = f"slurm job {job_id} {state}"
            elif (failure := scheduler_failure(state, job_id, code)) is not None:
                if not (job.run_dir / RESULT).exists() and not (job.run_dir / FAILURE).exists():
                    write_json(job.run_dir / FAILURE, failure)
        return busy

    def status(self, jobs: Sequence[Job], ctx: Context) -> dict[str, str]:
        """run_id -> "<STATE> (job <id>)", e.g. "RUNNING (job 41_2)" or
        "FAILED (exit 1:0, job 41_2)" followed, for runs that failed for good, by the
        last lines of the job's log on further lines. Runs never submitted are absent.
        A run with several jobs (duplicate submits, requeues) shows its live one."""
        out = {}
        for run_id, history in histories([j.run_dir for j in jobs]).items():
            job_id, state, code = current(history)
            if state in FAILED_FOR_GOOD:
                run_dir = next(j.run_dir for j in jobs if j.run_id == run_id)
                folder = Path(record_of(run_dir).get("folder", ""))
                tail = "\n".join(job_log_tail(folder, job_id))
                out[run_id] = f"{state} (exit {code}, job {job_id})" + (f"\n{tail}" if tail else "")
            else:
                out[run_id] = f"{state} (job {job_id})"
        return out

    def cancel(self, jobs: Sequence[Job], ctx: Context) -> int:
        """scancel every queued or running job of each run (all of them: a duplicate
        submit may have queued two); runs checkpoint on SIGTERM and stay resumable
        (Slurm sends SIGTERM, then SIGKILL after its KillWait, 30 s by default)."""
        known = histories([j.run_dir for j in jobs])
        count = 0
        for job in jobs:
            live = [jid for jid, state, _ in known.get(job.run_id, []) if state in ACTIVE]
            folder = record_of(job.run_dir).get("folder", "")
            for job_id in live:
                try:
                    submitit.SlurmJob(folder=folder, job_id=job_id).cancel(check=True)
                except subprocess.CalledProcessError as exc:
                    raise SubmissionError(f"scancel {job_id} failed ({exc.returncode})") from None
            count += bool(live)
        return count
