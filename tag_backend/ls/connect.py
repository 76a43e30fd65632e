"""Set up a Label Studio project for this backend in one idempotent call.

Steps, each one checked before it changes anything, so running it twice changes nothing:

1. reach Label Studio with the token;
2. find or create the project (by id, or by title) and give it the shipped labeling config when
   it has no usable one; turn on "use predictions to pre-label";
3. add the image folder as Local Files storage (or, without a folder, sync the storages the
   project already has: Local Files or cloud);
4. connect this backend (interactive pre-annotations on, Basic auth when the backend requires it)
   and give the project webhook the shared secret when one is set;
5. optionally ask Label Studio to retrieve predictions for every task (tasks that already hold a
   prediction of the backend's current model version are skipped by Label Studio itself).

Every failure is a :class:`LabelStudioSetupError` whose message names the setting to change.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import TagError
from .controls import parse_label_config
from .errors import LabelConfigError
from .protocol import WEBHOOK_SECRET_HEADER

logger = logging.getLogger(__name__)

SHIPPED_CONFIG = Path(__file__).with_name("label_config.xml")
#: The shipped labeling configs by the shape the regions take in Label Studio.
SHIPPED_CONFIGS = {
    "brush": SHIPPED_CONFIG,
    "polygon": Path(__file__).with_name("label_config_polygon.xml"),
    "rectangle": Path(__file__).with_name("label_config_rectangle.xml"),
}
#: Files Label Studio should turn into tasks (case-insensitive, anywhere below the folder).
IMAGE_REGEX = r"(?i).*\.(jpe?g|png|bmp|gif|tiff?|webp)$"
#: Import storage kinds Label Studio can hold besides Local Files (SDK attribute names).
CLOUD_STORAGES = ("s3", "s3s", "gcs", "gcs_sa", "gcswif", "azure", "azure_spi", "redis", "databricks")


class LabelStudioSetupError(TagError):
    """Label Studio cannot be set up as asked; the message says which setting to change."""


@dataclass(frozen=True)
class ConnectRequest:
    """What to connect: the Label Studio server, the project and the images."""

    ls_url: str
    api_key: str
    backend_url: str
    images: str | None = None  # folder as Label Studio sees it (absolute)
    project_id: int | None = None
    title: str = "TAG pre-labelling"
    prelabel: bool = False
    replace_config: bool = False
    shape: str = "brush"  # which shipped config a new project gets: brush, polygon or rectangle
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    webhook_secret: str | None = None
    timeout: float = 900.0  # seconds for one Label Studio call (retrieving predictions is synchronous)


@dataclass
class ConnectReport:
    """What was found, created or changed; ``changes`` is empty when nothing had to be done."""

    project_id: int = 0
    storage_ids: list[int] = field(default_factory=list)
    ml_backend_id: int = 0
    tasks: int = 0
    new_tasks: int = 0
    prelabel_message: str | None = None
    changes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"project {self.project_id}: {self.tasks} task(s) ({self.new_tasks} new)",
               f"ML backend {self.ml_backend_id} connected"]
        if self.prelabel_message:
            out.append(f"pre-labelling: {self.prelabel_message}")
        out.extend(f"changed: {c}" for c in self.changes)
        if not self.changes:
            out.append("nothing to change: the project was already set up")
        return out


def _api_error_text(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("validation_errors") or body.get("detail") or body
        return str(detail)
    return str(body if body is not None else exc)


class _Calls:
    """Label Studio calls with failures turned into messages that name the setting to change."""

    def __init__(self, request: ConnectRequest) -> None:
        from label_studio_sdk import LabelStudio

        self.request = request
        self.client = LabelStudio(base_url=request.ls_url, api_key=request.api_key, timeout=request.timeout)

    def __call__(self, what: str, fn: Callable[..., Any], *args: Any, hint: str = "", **kwargs: Any) -> Any:
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            status = exc.status_code
            if status in (401, 403):
                raise LabelStudioSetupError(
                    f"Label Studio refused the token while trying to {what} (HTTP {status}): set "
                    "LABEL_STUDIO_API_KEY (or --api-key) to a Personal Access Token from Account & Settings "
                    "of a user with access to the project") from None
            if status == 404:
                raise LabelStudioSetupError(f"cannot {what}: not found in Label Studio (HTTP 404). {hint}".strip()) from None
            raise LabelStudioSetupError(
                f"Label Studio refused to {what} (HTTP {status}): {_api_error_text(exc)}. {hint}".strip()) from None
        except httpx.TimeoutException:
            raise LabelStudioSetupError(
                f"Label Studio did not answer within {self.request.timeout:.0f} s while trying to {what}: "
                "raise --timeout (and ML_TIMEOUT_PREDICT on the Label Studio server when pre-labelling)") from None
        except httpx.HTTPError as exc:
            raise LabelStudioSetupError(
                f"cannot reach Label Studio at {self.request.ls_url} to {what} ({type(exc).__name__}: {exc}): "
                "set LABEL_STUDIO_URL (or --url) to the address of the Label Studio server") from None


def _project(calls: _Calls, request: ConnectRequest, report: ConnectReport):
    config = SHIPPED_CONFIGS[request.shape].read_text()
    client = calls.client
    if request.project_id is not None:
        project = calls(f"open project {request.project_id}", client.projects.get, request.project_id,
                        hint="Check --project (the number in the project's URL).")
    else:
        matches = [p for p in calls("list projects", lambda: list(client.projects.list(title=request.title)))
                   if p.title == request.title]
        if len(matches) > 1:
            ids = ", ".join(str(p.id) for p in matches)
            raise LabelStudioSetupError(
                f"several projects are titled {request.title!r} (ids {ids}): choose one with --project")
        if matches:
            project = matches[0]
        else:
            project = calls("create the project", client.projects.create, title=request.title,
                            label_config=config, show_collab_predictions=True)
            report.changes.append(f"created project {project.id} {request.title!r}")
    report.project_id = project.id
    updates: dict[str, Any] = {}
    if not _usable(project.label_config):
        if _is_blank(project.label_config) or request.replace_config:
            updates["label_config"] = config
            report.changes.append("set the labeling config to the shipped one")
        else:
            raise LabelStudioSetupError(
                f"project {project.id}'s labeling config cannot hold this backend's predictions "
                f"({_config_problem(project.label_config)}): fix it, or pass --replace-config to use the shipped "
                "config (tag_backend/ls/label_config.xml)")
    if not project.show_collab_predictions:
        updates["show_collab_predictions"] = True
        report.changes.append("turned on 'use predictions to pre-label tasks'")
    if updates:
        calls("update the project", client.projects.update, project.id, **updates,
              hint="Label Studio refuses a config that drops labels already used in annotations.")
    return project


def _usable(config: str | None) -> bool:
    try:
        parse_label_config(config)
        return True
    except LabelConfigError:
        return False


def _config_problem(config: str | None) -> str:
    try:
        parse_label_config(config)
    except LabelConfigError as exc:
        return str(exc)
    return "usable"


def _is_blank(config: str | None) -> bool:
    """A new project's config: empty or an empty ``<View>``."""
    text = "".join((config or "").split())
    return text in ("", "<View></View>", "<View/>")


def _task_count(calls: _Calls, project_id: int) -> int:
    project = calls("count the project's tasks", calls.client.projects.get, project_id)
    return int(getattr(project, "task_number", None) or 0)


def _storages(calls: _Calls, request: ConnectRequest, report: ConnectReport) -> None:
    client = calls.client
    storage = client.import_storage
    if request.images:
        path = os.path.normpath(request.images)
        local = calls("list the project's Local Files storages", storage.local.list, project=report.project_id)
        match = next((s for s in local if s.path and os.path.normpath(s.path) == path), None)
        if match is None:
            match = calls(
                f"add the folder {path} as Local Files storage", storage.local.create, project=report.project_id,
                path=path, regex_filter=IMAGE_REGEX, use_blob_urls=True, recursive_scan=True, title="TAG images",
                hint=("On the Label Studio server set LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                      "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to a parent of the folder; --images must be the "
                      "folder's absolute path as Label Studio sees it."))
            report.changes.append(f"added Local Files storage {match.id} for {path}")
        _sync(calls, storage.local, match.id, f"Local Files storage {match.id} ({path})")
        report.storage_ids.append(match.id)
        return
    for kind in ("local", *CLOUD_STORAGES):  # an existing project: sync the storages it has
        kind_client = getattr(storage, kind, None)
        if kind_client is None:
            continue
        for found in calls(f"list the project's {kind} storages", kind_client.list, project=report.project_id):
            _sync(calls, kind_client, found.id, f"{kind} storage {found.id}")
            report.storage_ids.append(found.id)


def _sync(calls: _Calls, kind_client: Any, storage_id: int, label: str, wait: float = 600.0) -> None:
    """Sync one import storage and wait for Label Studio to finish (it may sync in a background job)."""
    calls(f"sync {label}", kind_client.sync, storage_id)
    deadline = time.monotonic() + wait
    while True:
        state = calls(f"read the state of {label}", kind_client.get, storage_id)
        status = str(getattr(state, "status", "") or "completed")
        if status == "failed":
            raise LabelStudioSetupError(
                f"Label Studio could not sync {label}: {getattr(state, 'traceback', '') or 'no reason given'}")
        if status == "completed_with_errors":
            logger.warning("Label Studio synced %s with errors (some files were not imported): %s", label,
                           getattr(state, "traceback", "") or "see the storage in Label Studio")
        if status in ("completed", "completed_with_errors"):
            return
        if time.monotonic() > deadline:
            raise LabelStudioSetupError(f"{label} is still syncing after {wait:.0f} s ({status}); run again later")
        time.sleep(1.0)


def _same_url(a: str | None, b: str) -> bool:
    return (a or "").rstrip("/") == b.rstrip("/")


def _ml_backend(calls: _Calls, request: ConnectRequest, report: ConnectReport) -> None:
    ml = calls.client.ml
    wanted: dict[str, Any] = {"is_interactive": True}
    if request.basic_auth_user:
        wanted.update(auth_method="BASIC_AUTH", basic_auth_user=request.basic_auth_user)
    connected = calls("list the project's ML backends", ml.list, project=report.project_id)
    match = next((m for m in connected if _same_url(m.url, request.backend_url)), None)
    hint = (f"Label Studio must reach the backend at {request.backend_url}: set --backend-url / TAG_BACKEND_URL to "
            "the address Label Studio sees (in Docker Compose http://tag-backend:9090); for a backend on a "
            "private address start Label Studio with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false; "
            "with BASIC_AUTH_USER set here the same pair is sent.")
    secret = {"basic_auth_pass": request.basic_auth_pass} if request.basic_auth_user else {}
    if match is None:
        match = calls("connect the backend", ml.create, project=report.project_id, url=request.backend_url,
                      title="TAG", **wanted, **secret, hint=hint)
        report.changes.append(f"connected the backend {request.backend_url} (ML backend {match.id}, interactive)")
    else:
        stale = {k: v for k, v in wanted.items() if getattr(match, k, None) != v}
        if request.basic_auth_user and not getattr(match, "basic_auth_pass_is_set", False):
            stale.update(secret)
        if stale:
            calls("update the backend connection", ml.update, match.id, **{**stale, **secret}, hint=hint)
            report.changes.append(f"updated ML backend {match.id}: {', '.join(sorted(stale))}")
    report.ml_backend_id = match.id
    state = calls("read the backend connection", ml.get, match.id)
    if str(getattr(state, "state", "")) == "ER":
        raise LabelStudioSetupError(
            f"Label Studio cannot use the backend at {request.backend_url}: "
            f"{getattr(state, 'error_message', '') or 'no reason given'}. {hint}")
    if request.webhook_secret:
        _webhook_secret(calls, request, report)


def _webhook_secret(calls: _Calls, request: ConnectRequest, report: ConnectReport) -> None:
    """Label Studio's auto-created ``<backend>/webhook`` carries no auth: add the shared-secret header."""
    hooks = calls("list the project's webhooks", calls.client.webhooks.list, project=str(report.project_id))
    target = request.backend_url.rstrip("/") + "/webhook"
    for hook in hooks:
        if not (hook.url or "").split("?")[0].rstrip("/") == target:
            continue
        headers = dict(hook.headers or {})
        if headers.get(WEBHOOK_SECRET_HEADER) != request.webhook_secret:
            headers[WEBHOOK_SECRET_HEADER] = request.webhook_secret
            calls("add the webhook secret", calls.client.webhooks.update, hook.id, headers=headers)
            report.changes.append(f"added the {WEBHOOK_SECRET_HEADER} header to webhook {hook.id}")
        return
    raise LabelStudioSetupError(
        f"Label Studio did not create the webhook {target} when the backend was connected: add it in Project > "
        f"Settings > Webhooks with the header {WEBHOOK_SECRET_HEADER} (TAG_WEBHOOK_SECRET)")


def _prelabel(calls: _Calls, report: ConnectReport) -> None:
    calls("retrieve predictions for every task", calls.client.actions.create, id="retrieve_tasks_predictions",
          project=report.project_id, selected_items={"all": True, "excluded": []},
          hint="Check the backend's log; raise ML_TIMEOUT_PREDICT on the Label Studio server for slow CPUs.")
    report.prelabel_message = (
        "Label Studio asked the backend for every task without a prediction of its current version; "
        "tasks beyond the backend's time budget arrive as the backend's job queue pushes them")


def connect_project(request: ConnectRequest) -> ConnectReport:
    """Create or update the project, storage and backend connection; see the module docstring."""
    if not request.ls_url:
        raise LabelStudioSetupError("no Label Studio address: set LABEL_STUDIO_URL (or --url)")
    if not request.ls_url.startswith(("http://", "https://")):
        raise LabelStudioSetupError(f"LABEL_STUDIO_URL must start with http:// or https:// (got {request.ls_url!r})")
    if not request.api_key:
        raise LabelStudioSetupError(
            "no Label Studio token: set LABEL_STUDIO_API_KEY (or --api-key) to a Personal Access Token "
            "(Label Studio > Account & Settings)")
    if request.shape not in SHIPPED_CONFIGS:
        raise LabelStudioSetupError(f"shape must be one of {', '.join(SHIPPED_CONFIGS)} (got {request.shape!r})")
    if request.images is None and request.project_id is None:
        raise LabelStudioSetupError("say which images to label: --images DIR (a folder) or --project ID")
    if request.images is not None and not os.path.isabs(request.images):
        raise LabelStudioSetupError(f"--images must be an absolute path (as Label Studio sees it): {request.images!r}")
    calls = _Calls(request)
    report = ConnectReport()
    calls("check the token", calls.client.users.whoami, request_options={"max_retries": 0})
    _project(calls, request, report)
    before = _task_count(calls, report.project_id)
    _storages(calls, request, report)
    report.tasks = _task_count(calls, report.project_id)
    report.new_tasks = max(0, report.tasks - before)
    if report.new_tasks:
        report.changes.append(f"imported {report.new_tasks} task(s)")
    if report.tasks == 0:
        logger.warning("project %s has no tasks: add images to the folder (or import tasks) and run again",
                       report.project_id)
    _ml_backend(calls, request, report)
    if request.prelabel and report.tasks:
        _prelabel(calls, report)
    return report
