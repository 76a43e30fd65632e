"""Prometheus metrics of the backend (served as text on ``/metrics``).

Defined once here so the server, the job worker and the correction worker share them.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

STAGE_SECONDS = Histogram(
    "tag_stage_seconds", "Time spent per pipeline stage", ["stage"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PREDICT_SECONDS = Histogram("tag_predict_request_seconds", "Duration of /predict requests", registry=REGISTRY,
                            buckets=(0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 100, 300))
TASKS_PREDICTED = Counter("tag_tasks_predicted_total", "Tasks predicted", ["outcome"], registry=REGISTRY)
WEBHOOK_SECONDS = Histogram("tag_webhook_seconds", "Time to acknowledge a webhook", registry=REGISTRY,
                            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1))
WEBHOOK_EVENTS = Counter("tag_webhook_events_total", "Webhook events received", ["action"], registry=REGISTRY)
CORRECTIONS_INGESTED = Counter("tag_corrections_ingested_total", "Annotation corrections ingested",
                               ["outcome"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("tag_queue_depth", "Work items waiting", ["queue"], registry=REGISTRY)
JOB_TASKS = Counter("tag_job_tasks_total", "Pre-labelling job tasks finished", ["outcome"], registry=REGISTRY)
JOB_PUSHES = Counter("tag_job_pushes_total", "Predictions pushed to Label Studio by the job engine",
                     ["outcome"], registry=REGISTRY)  # outcome: pushed|gone|retry|failed|auth
INDEX_SIZE = Gauge("tag_index_entries", "Entries in the active concept index", registry=REGISTRY)
DB_VERSION = Gauge("tag_concept_db_version", "Concept database version", registry=REGISTRY)


def observe_timings(timings: dict[str, float]) -> None:
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(stage=stage).observe(seconds)


def render() -> bytes:
    return generate_latest(REGISTRY)
