"""One process-wide runtime: models, concept store, index and pipeline, built lazily from Settings.

Label Studio creates a new backend object per request and gunicorn serves requests on threads,
so everything heavy lives here, built once per process and shared (read-only) by threads.
"""
from __future__ import annotations

import logging
import threading
from functools import cached_property

from . import __version__
from .config import Settings
from .exemplars import AliasMap, AliasTarget, ExemplarIndex
from .models import load_clip, load_dino, resolve_device, resolve_dtype
from .pipeline import TagPipeline
from .presets import get_preset
from .stages.crf import CrfParams
from .text.cache import MemoryCachedEncoder

logger = logging.getLogger(__name__)

_runtimes: dict[Settings, "Runtime"] = {}
_runtimes_lock = threading.Lock()


def get_runtime(settings: Settings) -> "Runtime":
    """The process-wide :class:`Runtime` for these settings (created on first use, no loading)."""
    with _runtimes_lock:
        if settings not in _runtimes:
            _runtimes[settings] = Runtime(settings)
        return _runtimes[settings]


class Runtime:
    """Lazily built models + store + index + pipeline for one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.preset = get_preset(settings.preset)
        self._lock = threading.RLock()
        self._seen_db_version: int | None = None

    # --------------------------------------------------------------- models
    @cached_property
    def device(self):
        return resolve_device(self.settings.device)

    @cached_property
    def dtype(self):
        return resolve_dtype(self.settings.dtype, self.device, self.preset.prefer_bf16)

    @cached_property
    def dino(self):
        return load_dino(self.settings.dino_model or self.preset.dino_model, self.device, self.dtype)

    @cached_property
    def clip(self):
        model = self.settings.clip_model or self.preset.clip_model
        pretrained = None if model.startswith("local-dir:") else (
            self.settings.clip_pretrained or self.preset.clip_pretrained)
        return load_clip(model, pretrained, self.device, self.dtype)

    # --------------------------------------------------------------- database
    @cached_property
    def store(self):
        from database_tools.store import Store

        return Store(self.settings.resolved_db_url)

    @cached_property
    def stored_text_encoder(self):
        """CLIP text tower behind the per-(encoder, text) embedding cache in the store."""
        from database_tools.embedding import CachedTextEncoder

        return CachedTextEncoder(self.store, self.clip.text_encoder())

    @cached_property
    def text_encoder(self):
        """The stored cache behind a bounded in-process cache (hot path: naming)."""
        return MemoryCachedEncoder(self.stored_text_encoder)

    def _load_index(self):
        from database_tools.bootstrap import DEFAULT_VOCABULARY, ensure_index

        vocabulary = self.settings.default_vocabulary
        if vocabulary is None:
            vocabulary = DEFAULT_VOCABULARY
        elif vocabulary.strip().lower() == "none":
            vocabulary = None
        return ensure_index(self.store, self.stored_text_encoder, self.settings.resolved_index_dir,
                            vocabulary=vocabulary)

    def _live_index(self):
        """The base index plus the store's changes since it was built (loaded incrementally)."""
        from database_tools.delta_index import open_live_index

        return open_live_index(self.store, self.stored_text_encoder, self._load_index())

    def _base_changed(self, live) -> bool:
        """Whether ``tag-db compact`` / ``build-index`` published a new base version."""
        from database_tools.index_files import current_version_dir, encoder_root

        root = encoder_root(self.settings.resolved_index_dir, self.clip.encoder_id)
        try:
            return current_version_dir(root).name != live.version
        except Exception:  # noqa: BLE001 - unreadable CURRENT: keep serving the loaded version
            return False

    # --------------------------------------------------------------- pipeline
    @cached_property
    def pipeline(self) -> TagPipeline:
        with self._lock:
            s, p = self.settings, self.preset
            version = self.store.db_version()
            exemplars = ExemplarIndex(self.clip.encoder_id)
            exemplars.refresh(self.store, version)
            pipeline = TagPipeline(
                self.dino, self.clip, self._live_index(), text_encoder=self.text_encoder,
                exemplars=exemplars, aliases=self._load_aliases(),
                image_size=p.image_size, n_segments=p.n_segments, kmeans_restarts=p.kmeans_restarts,
                use_crf=p.use_crf, crf_params=CrfParams(iterations=p.crf_iterations, scale=p.crf_scale),
                dense_method=s.dense_method or p.dense_method,
                exemplar_threshold=s.exemplar_threshold, max_image_pixels=s.max_image_pixels,
            )
            pipeline.index.refresh(self.store, version)
            self._seen_db_version = version
            return pipeline

    def _load_aliases(self) -> AliasMap:
        from database_tools.normalize import normalize_text

        raw = self.store.load_aliases(min_count=self.settings.alias_min_count)
        return AliasMap({norm: AliasTarget(text, entry_id)
                         for norm, (text, _, entry_id) in raw.items()},
                        normalize=lambda s: normalize_text(s, "concept"))

    @property
    def knowledge_seq(self) -> int:
        """The store sequence number the loaded knowledge reflects (recorded with predictions)."""
        return int(self._seen_db_version or 0)

    def refresh(self) -> bool:
        """Pick up database changes (new concepts, corrections) made by this or another process.

        Incremental: only entries and exemplars changed since the loaded sequence number are
        read (the delta index and exemplar index follow the store); a new base index version
        (``tag-db compact``) is opened when one was published. Cheap when nothing changed (one
        small query). Returns True when something was applied.
        """
        pipeline = self.pipeline
        version = self.store.db_version()
        if version == self._seen_db_version and not self._base_changed(pipeline.index):
            return False
        with self._lock:
            if self._base_changed(pipeline.index):
                pipeline.index = self._live_index()
                logger.info("concept index: new base version %s", pipeline.index.version)
            if version != self._seen_db_version:
                pipeline.index.refresh(self.store, version)
                pipeline.exemplars.refresh(self.store, version)
                pipeline.aliases = self._load_aliases()
                self._seen_db_version = version
            return True

    def release(self):
        """The current knowledge release (``database_tools.releases.Release``)."""
        from database_tools.releases import current_release

        return current_release(self.store)

    def model_version(self, release: int | None = None) -> str:
        """Engine release + preset + encoder + knowledge release ``r<N>`` (Label Studio's
        model_version). Corrections do not change it; a release does (docs/learning.md)."""
        number = self.release().number if release is None else int(release)
        encoder = (self.settings.clip_model or self.preset.clip_model).replace("local-dir:", "local-")
        encoder = encoder.rsplit("/", 1)[-1]
        return f"tag-{__version__}-{self.preset.name}-{encoder}-r{number}"
