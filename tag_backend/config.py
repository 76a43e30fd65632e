"""All configuration read from the environment, in one place.

Config flows one way: environment / CLI flags -> :class:`Settings` -> constructor arguments.
Nothing else in the project reads ``os.environ`` for its own settings (libraries such as
``label_studio_sdk`` and ``huggingface_hub`` read their own variables).
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

logger = logging.getLogger(__name__)

def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "tag-backend")


def _default_compiled_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tag-backend", "compiled")


@dataclass(frozen=True)
class EnvVar:
    """One setting: its environment variable, field, parser and documentation."""

    name: str
    field: str
    help: str
    parse: Any = str
    secret: bool = False
    #: How the default is described in the docs when the field's default is ``None``
    #: (decided later, by the preset, the device or another setting).
    default_doc: str = "unset"


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _release_policy(value: str) -> str:
    """A valid ``TAG_RELEASE_POLICY`` (parsed by ``database_tools.releases``), normalised."""
    from database_tools.releases import ReleasePolicy

    policy = ReleasePolicy.parse(value)
    return policy.kind if policy.kind == "manual" else f"{policy.kind}:{policy.value}"


def _probability(value: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"expected a probability between 0 and 1, got {value!r}")
    return v


def _choice(*choices: str):
    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return v

    return parse


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class Settings:
    """Every setting of the engine, the server and the database tools.

    ``None`` means "use the preset's / library's default".
    """

    # Engine
    preset: str = "fast"
    dino_model: str | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    device: str | None = None
    dtype: str | None = None
    dense_method: str | None = None
    refine: str = "none"
    sam_model: str | None = None
    backend: str = "auto"
    backend_cache_dir: str = field(default_factory=_default_compiled_cache)
    backend_int8: bool = False
    backend_max_batch: int = 2
    max_image_pixels: int = 40_000_000
    # Concept database
    data_dir: str = field(default_factory=_default_data_dir)
    db_url: str | None = None
    db_pool_size: int = 5
    db_max_overflow: int = 10
    index_store: str | None = None
    index_dir: str | None = None
    new_concept_status: str = "active"
    default_vocabulary: str | None = None
    exemplar_threshold: float = 0.90
    alias_min_count: int = 3
    exemplars_per_concept: int = 32
    exemplars_total: int = 200_000
    release_policy: str = "manual"
    # Label Studio backend
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    backend_url: str = "http://localhost:9090"
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    webhook_secret: str | None = None
    allowed_local_roots: str | None = None
    allow_http_urls: bool = True
    url_allowlist: str | None = None
    local_files_document_root: str | None = None
    max_download_bytes: int = 50_000_000
    download_timeout: float = 20.0
    max_request_bytes: int = 100_000_000
    max_webhook_bytes: int = 32_000_000
    max_setup_bytes: int = 2_000_000
    request_body_timeout: float = 30.0
    max_regions: int = 30
    polygon_tolerance: float = 1.5
    guided_threshold: float = 0.5
    guided_fallback: str | None = None
    guided_below: str = "keep"
    predict_budget_seconds: float = 60.0
    feature_cache_mb: int = 256
    log_format: str = "text"
    log_level: str = "INFO"
    # Server process layout (gunicorn; `tag-backend serve` uses the port)
    port: int = 9090
    workers: int = 1
    threads: int = 4

    @property
    def resolved_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        return "sqlite:///" + str(Path(self.data_dir) / "concepts.db")

    @property
    def store_options(self) -> dict[str, Any]:
        """Keyword arguments of ``database_tools.store.Store`` (connection pool)."""
        return {"pool_size": self.db_pool_size, "max_overflow": self.db_max_overflow}

    @property
    def resolved_index_dir(self) -> str:
        return self.index_dir or str(Path(self.data_dir) / "index")

    def replace(self, **changes: Any) -> "Settings":
        """Copy with the given fields changed; ``None`` values are ignored (flag not set)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("TAG_PRESET", "preset", "Preset (docs/presets.md): `fast` (CPU: DINOv2-S/14 + CLIP ViT-B/16, improvements), `quality` (GPU: DINOv2-B/14 + CLIP ViT-L/14 OpenAI, improvements) or `paper` (TAG as published)."),
    EnvVar("TAG_DINO_MODEL", "dino_model", "DINOv2: a Hugging Face id (hub cache) or a local directory saved by `save_pretrained`.", default_doc="the preset's"),
    EnvVar("TAG_CLIP_MODEL", "clip_model", "CLIP: an open_clip model name (e.g. `ViT-B-16`) or `local-dir:DIR`.", default_doc="the preset's"),
    EnvVar("TAG_CLIP_PRETRAINED", "clip_pretrained", "CLIP weights: an open_clip pretrained tag (e.g. `openai`) or a checkpoint file.", default_doc="the preset's"),
    EnvVar("TAG_DEVICE", "device", "`cpu`, `cuda`, `cuda:N` (default: cuda if available).", default_doc="`cuda` if available, else `cpu`"),
    EnvVar("TAG_DTYPE", "dtype", "`float32`, `bfloat16` or `float16` (default: per preset and device).", default_doc="per preset and device"),
    EnvVar("TAG_DENSE_METHOD", "dense_method", "Dense CLIP features: `gem` (paper), `naclip` (NACLIP last block, cost of a plain forward) or `plain` (open_clip patch tokens).", default_doc="the preset's (`gem`)"),
    EnvVar("TAG_REFINE", "refine", "Mask refinement: `none` or `sam2` (SAM 2.1 boundaries for every segment; interactive clicks use SAM too; docs/interactive.md).", _choice("none", "sam2")),
    EnvVar("TAG_SAM_MODEL", "sam_model", "SAM 2 / 2.1 weights for `TAG_REFINE=sam2`: a Hugging Face id (default `facebook/sam2.1-hiera-tiny`) or a local directory saved with `save_pretrained`.", default_doc="`facebook/sam2.1-hiera-tiny`"),
    EnvVar("TAG_BACKEND", "backend", "Engine of the backbone forwards: `torch`, `openvino`, `onnxruntime` or `auto` (OpenVINO on CPU when installed, else torch). See docs/inference-backends.md."),
    EnvVar("TAG_BACKEND_CACHE", "backend_cache_dir", "Where exported OpenVINO / ONNX graphs, OpenVINO's compiled blobs and the records of built backbones are cached (under `$XDG_CACHE_HOME`, by default `~/.cache`; docs/inference-backends.md).", default_doc="`~/.cache/tag-backend/compiled`"),
    EnvVar("TAG_BACKEND_MAX_BATCH", "backend_max_batch", "OpenVINO / ONNX Runtime: most images per compiled forward; a larger batch goes through in chunks (each image in a call holds ~1 GB of the runtime's working memory at 448²; docs/inference-backends.md).", _positive_int),
    EnvVar("TAG_BACKEND_INT8", "backend_int8", "OpenVINO only: int8 weight compression (NNCF); faster, features drift (docs/inference-backends.md).", _bool),
    EnvVar("TAG_MAX_IMAGE_PIXELS", "max_image_pixels", "Decompression-bomb guard: images with more pixels are refused.", int),
    EnvVar("TAG_DATA_DIR", "data_dir", "Where the default SQLite database, indexes and caches live.", default_doc="`$XDG_DATA_HOME/tag-backend` (`~/.local/share/tag-backend`)"),
    EnvVar("TAG_DB_URL", "db_url", "Concept database URL: `sqlite:///path.db` or `postgresql+psycopg://user:pass@host/db`.", str, True, default_doc="SQLite `concepts.db` in `TAG_DATA_DIR`"),
    EnvVar("TAG_DB_POOL_SIZE", "db_pool_size", "PostgreSQL connections each process keeps open (SQLAlchemy pool; sizing and PgBouncer: docs/scale.md).", _positive_int),
    EnvVar("TAG_DB_MAX_OVERFLOW", "db_max_overflow", "Extra PostgreSQL connections a process may open beyond the pool under load (closed when returned).", _non_negative_int),
    EnvVar("TAG_INDEX_DIR", "index_dir", "Directory of the versioned FAISS concept indexes.", default_doc="`index/` in `TAG_DATA_DIR`"),
    EnvVar("TAG_INDEX_STORE", "index_store", "Shared directory where base indexes are published as immutable versions; each process pulls the version it needs into `TAG_INDEX_DIR`, verified by sha256 (docs/scale.md).", default_doc="unset: each process builds its own index"),
    EnvVar("TAG_DEFAULT_VOCABULARY", "default_vocabulary", "Concept list imported on first use (one name per line); `none` = only what you import. Default: the shipped vocabulary.", default_doc="the shipped vocabulary"),
    EnvVar("TAG_NEW_CONCEPT_STATUS", "new_concept_status", "Status of concepts first seen in a correction: `active` or `pending`."),
    EnvVar("TAG_EXEMPLAR_THRESHOLD", "exemplar_threshold", "Cosine above which a segment takes the name of a corrected exemplar.", float),
    EnvVar("TAG_ALIAS_MIN_COUNT", "alias_min_count", "Corrections of a predicted name to the same new name before every later prediction of it is renamed.", int),
    EnvVar("TAG_EXEMPLARS_PER_CONCEPT", "exemplars_per_concept", "Most exemplars served per concept (a diverse subset, k-center, of its corrected regions).", int),
    EnvVar("TAG_EXEMPLARS_TOTAL", "exemplars_total", "Most exemplar candidates stored per encoder; at the cap new corrected regions add no exemplar.", int),
    EnvVar("TAG_RELEASE_POLICY", "release_policy", "When a knowledge release (the `r<N>` of model_version) is cut: `manual` (tag-db release, Start Training), `corrections:N` or `minutes:T`.", _release_policy),
    EnvVar("LABEL_STUDIO_URL", "label_studio_url", "Label Studio base URL the backend fetches images from and pushes predictions to."),
    EnvVar("LABEL_STUDIO_API_KEY", "label_studio_api_key", "Label Studio personal access token or legacy token.", str, True),
    EnvVar("TAG_BACKEND_URL", "backend_url", "Address at which Label Studio reaches this backend (`tag-backend ls-connect` connects it there)."),
    EnvVar("BASIC_AUTH_USER", "basic_auth_user", "HTTP Basic user required on every endpoint when set."),
    EnvVar("BASIC_AUTH_PASS", "basic_auth_pass", "HTTP Basic password.", str, True),
    EnvVar("TAG_WEBHOOK_SECRET", "webhook_secret", "Shared secret for `/webhook` (header `X-Tag-Webhook-Secret` or `?token=`).", str, True),
    EnvVar("TAG_ALLOWED_LOCAL_ROOTS", "allowed_local_roots", "`:`-separated directories task images may be read from (local files)."),
    EnvVar("TAG_ALLOW_HTTP_URLS", "allow_http_urls", "Allow plain http(s) image URLs in tasks.", _bool),
    EnvVar("TAG_URL_ALLOWLIST", "url_allowlist", "Comma-separated hosts (`img.lan`, `.corp.example` = domain and subdomains) and IP networks (`10.0.0.0/8`, `127.0.0.1`) image downloads may reach besides public addresses and the Label Studio host."),
    EnvVar("LOCAL_FILES_DOCUMENT_ROOT", "local_files_document_root", "Label Studio's Local Files root, when mounted here: `/data/local-files/?d=` images are read from it instead of downloaded."),
    EnvVar("TAG_MAX_DOWNLOAD_BYTES", "max_download_bytes", "Largest image download accepted.", int),
    EnvVar("TAG_DOWNLOAD_TIMEOUT", "download_timeout", "Total seconds (connect, headers and body) before an image download is abandoned.", float),
    EnvVar("TAG_MAX_REQUEST_BYTES", "max_request_bytes", "Largest request body on `/predict` and other routes (413 above it).", int),
    EnvVar("TAG_MAX_WEBHOOK_BYTES", "max_webhook_bytes", "Largest `/webhook` body (413 above it); Label Studio sends whole annotations, a big brush annotation is a few MB.", int),
    EnvVar("TAG_MAX_SETUP_BYTES", "max_setup_bytes", "Largest `/setup` body (413 above it).", int),
    EnvVar("TAG_REQUEST_BODY_TIMEOUT", "request_body_timeout", "Seconds a client has to send a request body, however slowly it trickles (408 after).", float),
    EnvVar("TAG_MAX_REGIONS", "max_regions", "Most regions returned per image (largest kept).", int),
    EnvVar("TAG_POLYGON_TOLERANCE", "polygon_tolerance", "`PolygonLabels` output: the most a simplified outline strays from the mask, in pixels (0 keeps every corner).", float),
    EnvVar("TAG_GUIDED_THRESHOLD", "guided_threshold", "Guided mode: zero-shot probability (0-1) a project label needs to label a region; a control's `model_score_threshold` overrides it (docs/interactive.md).", _probability),
    EnvVar("TAG_GUIDED_FALLBACK", "guided_fallback", "Guided mode: label given below the threshold when it is one of the project's labels."),
    EnvVar("TAG_GUIDED_BELOW", "guided_below", "Guided mode, below the threshold and no fallback label: `keep` (the free-form name is the label) or `drop` the region.", _choice("keep", "drop")),
    EnvVar("TAG_PREDICT_BUDGET", "predict_budget_seconds", "Seconds `/predict` may compute before queueing the rest.", float),
    EnvVar("TAG_FEATURE_CACHE_MB", "feature_cache_mb", "Memory for the backbone features of recently predicted images (a second request on the same image skips the backbones); 0 turns the cache off.", int),
    EnvVar("TAG_LOG_FORMAT", "log_format", "`text` or `json` (structured logs)."),
    EnvVar("TAG_LOG_LEVEL", "log_level", "Logging level."),
    EnvVar("TAG_PORT", "port", "Port the server listens on (gunicorn in the Docker image, `tag-backend serve`).", int),
    EnvVar("TAG_WORKERS", "workers", "gunicorn worker processes; each loads its own models, so keep 1 unless you have the memory.", int),
    EnvVar("TAG_THREADS", "threads", "gunicorn threads per worker (requests served at once; they share the models).", int),
)

#: Names Label Studio's own ML backends (and their compose files) use for our settings.
#: The ``TAG_``/our own spelling wins when both are set; a warning says so when they differ.
ALIASES: dict[str, str] = {
    "LABEL_STUDIO_HOST": "LABEL_STUDIO_URL",
    "LABEL_STUDIO_ACCESS_TOKEN": "LABEL_STUDIO_API_KEY",
    "LOG_LEVEL": "TAG_LOG_LEVEL",
    "WORKERS": "TAG_WORKERS",
    "THREADS": "TAG_THREADS",
    "PORT": "TAG_PORT",
    "MODEL_DIR": "TAG_DATA_DIR",
    "ML_SERVER_BASIC_AUTH_USER": "BASIC_AUTH_USER",
    "ML_SERVER_BASIC_AUTH_PASS": "BASIC_AUTH_PASS",
}
#: ``TAG_`` variables read by something other than :class:`Settings` (benchmarks, tests, compose).
OTHER_TAG_VARIABLES = frozenset({"TAG_BENCH_CACHE", "TAG_TEST_CACHE", "TAG_E2E_DOCS_IMG", "TAG_DB_PASSWORD"})


def _raw_values(env: Mapping[str, str]) -> dict[str, str]:
    """Each setting's raw text, from its own name or else from its alias."""
    by_name = {var.name: var for var in ENV_VARS}
    raw = {name: env[name] for name in by_name if env.get(name, "") != ""}
    for alias, name in ALIASES.items():
        value = env.get(alias, "")
        if value != "" and name not in raw:
            raw[name] = value
    return raw


def environment_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """Problems worth a warning at start: disagreeing aliases and unknown ``TAG_`` variables."""
    env = os.environ if environ is None else environ
    secret = {var.name for var in ENV_VARS if var.secret}
    warnings = []
    for alias, name in ALIASES.items():
        ours, theirs = env.get(name, ""), env.get(alias, "")
        if ours != "" and theirs != "" and ours != theirs:
            shown = "" if name in secret else f" ({ours!r} over {theirs!r})"
            warnings.append(f"{name} and {alias} are both set and differ: using {name}{shown}")
    known = {var.name for var in ENV_VARS} | OTHER_TAG_VARIABLES
    for name in sorted(env):
        if name.startswith("TAG_") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else " (see docs/configuration.md)"
            warnings.append(f"{name} is not a setting of this backend and is ignored{hint}")
    return warnings


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read :class:`Settings` from the environment; raises :class:`ConfigError` on a bad value."""
    env = os.environ if environ is None else environ
    raw = _raw_values(env)
    values: dict[str, Any] = {}
    for var in ENV_VARS:
        if var.name not in raw:
            continue
        try:
            values[var.field] = var.parse(raw[var.name])
        except ValueError as exc:
            source = var.name if env.get(var.name, "") != "" else f"{_alias_of(var.name)} (read as {var.name})"
            raise ConfigError(f"{source}: {exc}") from None
    for warning in environment_warnings(env):
        logger.warning("%s", warning)
    return Settings(**values)


def _alias_of(name: str) -> str:
    return next(alias for alias, target in ALIASES.items() if target == name)
