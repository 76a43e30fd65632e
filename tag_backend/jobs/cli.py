"""``tag-backend prelabel`` and ``tag-backend jobs list|show|cancel|work`` (thin CLI)."""
from __future__ import annotations

import sys
import time

import click

from ..cli_common import configure_logging, engine_options, handle_errors, settings_with


def _services(flags: dict):
    from ..services import Services

    settings = settings_with(**flags)
    configure_logging(settings.log_level, settings.log_format)
    return Services(settings)


def _options(batch_size: int):
    from .worker import WorkerOptions

    return WorkerOptions(batch_size=batch_size, prefetch=max(2 * batch_size, 2))


@click.command()
@click.option("--project", "project_id", required=True, type=int, help="Label Studio project id.")
@click.option("--filter", "task_filter", type=click.Choice(["unlabeled", "all"]),
              default="unlabeled", show_default=True,
              help="unlabeled: skip tasks with annotations; all: every task.")
@click.option("--limit", type=click.IntRange(min=1), help="Queue at most N tasks this run.")
@click.option("--refresh", is_flag=True,
              help="Re-predict only unlabeled tasks whose stored prediction corrections learnt "
                   "since can change (see docs/learning.md); --filter is ignored.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Images per engine call.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@engine_options
@handle_errors
def prelabel(project_id, task_filter, limit, refresh, batch_size, quiet, **flags) -> None:
    """Pre-label a whole Label Studio project (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY).

    Skips tasks that already have a prediction of the current model version, pushes each
    prediction as it finishes, and can be stopped with Ctrl-C: run it again to resume.
    A second run on a project whose job is still active joins that job. With --refresh,
    only predictions that corrections made stale are recomputed, and pushed only when they
    changed.
    """
    from .prelabel import PrelabelInterrupted, prelabel_project

    services = _services(flags)
    try:
        plan, final = prelabel_project(services, project_id, filter=task_filter, limit=limit,
                                       progress=not quiet, refresh=refresh,
                                       options=_options(batch_size))
    except PrelabelInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
    skipped = "" if plan.skipped is None else (
        f", {plan.skipped} already predicted ({plan.model_version})"
        + (" or labeled" if task_filter == "unlabeled" else ""))
    click.echo(f"project {project_id}: {plan.seen} task(s) need work{skipped}, "
               f"{plan.queued} queued" + (f" (joined job {plan.job_id})" if plan.joined else ""))
    if final is None:
        click.echo("nothing to do")
        return
    unchanged = f", {final.unchanged} unchanged (not pushed again)" if refresh else ""
    click.echo(f"job {final.job_id}: {final.done} done, {final.failed} failed, {final.pushed} "
               f"pushed{unchanged}, {final.push_gone} gone (task deleted), {final.push_failed} "
               "refused")
    per_1000 = 1000 * plan.ls_requests / max(final.total, 1)
    click.echo(f"Label Studio requests: {plan.ls_requests} ({per_1000:.1f} per 1,000 tasks)")
    _print_failures(services, final.job_id)
    if final.failed or final.push_failed:
        sys.exit(1)


def _print_failures(services, job_id: int) -> None:
    for task_id, reason in services.jobs.queue.failures(job_id):
        click.echo(f"FAILED task {task_id}: {reason}", err=True)


@click.group()
def jobs() -> None:
    """Inspect and manage the pre-labelling job queue."""


def _queue(flags: dict):
    from database_tools.store import Store

    from .queue import JobQueue

    settings = settings_with(**flags)
    configure_logging(settings.log_level, settings.log_format)
    return JobQueue.from_store(Store(settings.resolved_db_url, **settings.store_options))


def _db_option(fn):
    return click.option("--db", "db_url", metavar="URL",
                        help="Concept database URL [TAG_DB_URL].")(fn)


@jobs.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@_db_option
@handle_errors
def list_jobs(limit, **flags) -> None:
    """Recent jobs with their progress."""
    queue = _queue(flags)
    click.echo(f"{'id':>5} {'kind':9} {'project':>7} {'status':9} {'done':>6} {'failed':>6} "
               f"{'total':>6} {'pushed':>6}  created")
    for job in queue.list_jobs(limit):
        p = queue.progress(job.id)
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
        click.echo(f"{job.id:>5} {job.kind:9} {job.project_id or '-':>7} {job.status:9} "
                   f"{p.done:>6} {p.failed:>6} {p.total:>6} {p.pushed:>6}  {created}")


@jobs.command("show")
@click.argument("job_id", type=int)
@_db_option
@handle_errors
def show_job(job_id, **flags) -> None:
    """One job's counts and its failures."""
    from .queue import JobError
    from .schema import REFRESH

    queue = _queue(flags)
    try:
        job, p = queue.get_job(job_id), queue.progress(job_id)
    except JobError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"job {job.id} ({job.kind}, project {job.project_id}, {job.status}), "
               f"model_version {job.model_version}")
    click.echo(f"tasks: {p.total} total, {p.queued} queued, {p.running} running, {p.done} done, "
               f"{p.failed} failed, {p.cancelled} cancelled")
    click.echo(f"pushes: {p.pushed} pushed, {p.push_pending} pending, {p.push_gone} gone, "
               f"{p.push_failed} refused" + (f", {p.unchanged} unchanged (not pushed again)"
                                             if job.kind == REFRESH else ""))
    for task_id, reason in queue.failures(job_id):
        click.echo(f"  task {task_id}: {reason}")


@jobs.command("cancel")
@click.argument("job_id", type=int)
@_db_option
@handle_errors
def cancel_job(job_id, **flags) -> None:
    """Cancel a job: queued tasks are dropped, finished results are kept."""
    from .queue import JobError

    try:
        dropped = _queue(flags).cancel(job_id)
    except JobError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"job {job_id} cancelled ({dropped} queued task(s) dropped)")


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    scale = units.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a number with s, m, h, d or w "
                                 "(e.g. 30d)") from None
    if seconds < 0:
        raise click.BadParameter(f"{text!r}: must not be negative")
    return seconds


@jobs.command("purge")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Age such as 30d, 12h or 90m: finished jobs last changed before it and "
                   "stored predictions older than it are deleted.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_db_option
@handle_errors
def purge_jobs(older_than, quiet, **flags) -> None:
    """Delete old finished jobs and stored predictions (active work is never touched)."""
    from tqdm import tqdm

    seconds = parse_age(older_than)
    queue = _queue(flags)
    with tqdm(unit="row", disable=quiet, desc="purging") as bar:
        report = queue.purge(seconds, on_progress=bar.update)
    click.echo(f"purged {report.jobs} job(s), {report.tasks} task row(s), "
               f"{report.predictions} stored prediction(s)")


@jobs.command("work")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, 64))
@engine_options
@handle_errors
def work(batch_size, **flags) -> None:
    """Run a worker on the shared queue until Ctrl-C (extra capacity for any replica's jobs).

    The models are loaded before the first task is claimed; if they cannot be loaded the
    command stops with the reason and the queue is left untouched.
    """
    from .worker import Worker

    services = _services(flags)
    # Load the engine before claiming anything: a worker still loading its models would hold
    # tasks the other workers could compute, and one whose models cannot load would fail every
    # task it claims (each failure costs an attempt) instead of stopping with the reason.
    click.echo("loading the models ...")
    services.pipeline()
    worker = Worker(services.jobs.queue, services, services.jobs.pusher, _options(batch_size))
    worker.start()
    click.echo(f"worker {worker.worker_id} running; Ctrl-C to stop")
    try:
        while worker.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    worker.stop()
    click.echo(f"stopped: {worker.stats.done} done, {worker.stats.failed} failed, "
               f"{worker.stats.pushed} pushed")
