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
from .exemplars import AliasMap, ExemplarMemory
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

    @cached_property
    def refiner(self):
        """The SAM 2 refiner when ``TAG_REFINE=sam2`` (loaded on first use), else None."""
        if self.settings.refine != "sam2":
            return None
        from .sam_models import DEFAULT_SAM_MODEL, load_sam
        from .stages.sam_refine import SamRefiner

        # SAM runs in float32 unless a dtype was asked for explicitly: its mask logits are
        # thresholded at 0, where bf16 rounding moves boundaries.
        dtype = resolve_dtype(self.settings.dtype, self.device, prefer_bf16=False)
        return SamRefiner(load_sam(self.settings.sam_model or DEFAULT_SAM_MODEL, self.device, dtype))

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

    # --------------------------------------------------------------- pipeline
    @cached_property
    def pipeline(self) -> TagPipeline:
        with self._lock:
            s, p = self.settings, self.preset
            pipeline = TagPipeline(
                self.dino, self.clip, self._load_index(), text_encoder=self.text_encoder,
                exemplars=self._load_exemplars(), aliases=self._load_aliases(),
                image_size=p.image_size, n_segments=p.n_segments, kmeans_restarts=p.kmeans_restarts,
                use_crf=p.use_crf, crf_params=CrfParams(iterations=p.crf_iterations, scale=p.crf_scale),
                dense_method=s.dense_method or p.dense_method,
                exemplar_threshold=s.exemplar_threshold, max_image_pixels=s.max_image_pixels,
                refiner=self.refiner,
            )
            self._seen_db_version = self.store.db_version()
            return pipeline

    def _load_exemplars(self) -> ExemplarMemory:
        names, embeddings = self.store.load_exemplars(self.clip.encoder_id)
        return ExemplarMemory(names=list(names), embeddings=embeddings)

    def _load_aliases(self) -> AliasMap:
        from database_tools.normalize import normalize_text

        raw = self.store.load_aliases(min_count=self.settings.alias_min_count)
        return AliasMap({norm: target for norm, (target, _) in raw.items()},
                        normalize=lambda s: normalize_text(s, "concept"))

    def refresh(self) -> bool:
        """Pick up database changes (new concepts, corrections) made by this or another process.

        Cheap when nothing changed (one small query). Returns True when something was reloaded.
        """
        pipeline = self.pipeline
        version = self.store.db_version()
        if version == self._seen_db_version:
            return False
        with self._lock:
            if version == self._seen_db_version:
                return False
            pipeline.index = self._load_index()
            pipeline.exemplars = self._load_exemplars()
            pipeline.aliases = self._load_aliases()
            self._seen_db_version = version
            logger.info("concept database changed (version %s): index and exemplars reloaded", version)
            return True

    def model_version(self) -> str:
        """Engine version + preset + encoder + concept-database version (Label Studio model_version)."""
        db = self.store.db_version()
        encoder = (self.settings.clip_model or self.preset.clip_model).replace("local-dir:", "local-")
        encoder = encoder.rsplit("/", 1)[-1]
        refine = "-sam2" if self.settings.refine == "sam2" else ""
        return f"tag-{__version__}-{self.preset.name}{refine}-{encoder}-db{db}"
