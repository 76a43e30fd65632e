"""The services of one process: built once (``create_app``, each CLI command) and passed down.

:class:`Services` holds everything the server, the job worker, the CLI and the evaluator share:
settings, the backbones (loaded on first use), the concept store, the current knowledge
snapshot, the job queue and worker, the image fetcher, the Label Studio client, the one
:class:`~tag_backend.predictor.Predictor` and the one :class:`~tag_backend.ls.serializer.Serializer`.
Nothing heavy happens when it is built: models, store and index load on first use, so
``/health`` and ``/setup`` stay instant. Gunicorn serves requests on threads that share it.

Knowledge (index, exemplars, aliases, knowledge release) is a
:class:`~tag_backend.knowledge.Knowledge` snapshot: :meth:`Services.refresh` applies what
changed since the current one (incrementally, :func:`~tag_backend.knowledge.refresh_knowledge`)
and swaps the new snapshot in with one assignment.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from . import __version__
from .config import Settings
from .feature_cache import FeatureCache
from .jobs.budget import CostEstimate
from .knowledge import Knowledge, read_knowledge, refresh_knowledge
from .ls.client import LabelStudioClient
from .ls.guided import LabelSnapper, clip_temperature
from .ls.interactive import InteractivePredictor
from .ls.media import MediaFetcher
from .ls.predictor import TaskPredictor
from .ls.serializer import Serializer, snapping_labeler
from .ls.served import ServedRecorder
from .model_records import ModelRecords
from .models import LoadedClip, LoadedDino, load_clip, load_dino, resolve_device, resolve_dtype
from .pipeline import TagPipeline
from .predictor import Predictor
from .presets import Preset, get_preset

logger = logging.getLogger(__name__)

RECORDS_DIR = "models"  # under TAG_BACKEND_CACHE, beside the exported graphs


class Models:
    """The two backbones of the settings' preset, loaded on first use (loaders cache them per
    process on model, weights, device and dtype)."""

    def __init__(self, settings: Settings, preset: Preset) -> None:
        self.settings, self.preset = settings, preset
        self._lock = threading.Lock()

    @cached_property
    def device(self):
        return resolve_device(self.settings.device)

    @cached_property
    def backend(self):
        """Which engine runs the backbone forwards, in which precision (``TAG_BACKEND``)."""
        from .inference.selection import resolve_backend

        precision = resolve_dtype(self.settings.dtype, self.device, self.preset.prefer_bf16)
        return resolve_backend(self.settings.backend, self.device, precision,
                               explicit_dtype=bool(self.settings.dtype), int8=self.settings.backend_int8)

    @cached_property
    def dtype(self):
        """The weights' dtype: float32 for a compiled backend (its precision is a compile hint)."""
        import torch

        return torch.float32 if self.backend.compiled else self.backend.precision

    @cached_property
    def forwards(self):
        """The backbone forwards on the chosen backend (graphs compiled on first use)."""
        from .inference.forwards import build_forwards

        return build_forwards(self.dino, self.clip, self.backend, self.settings.backend_cache_dir,
                              fallback=self.settings.backend.strip().lower() == "auto",
                              max_batch=self.settings.backend_max_batch)

    @cached_property
    def records(self) -> ModelRecords | None:
        """Descriptions of built backbones, with a compiled backend only: its forwards need
        the torch models only to export a graph, so an unchanged checkpoint is not built at
        start (:mod:`tag_backend.model_records`)."""
        if not self.backend.compiled:
            return None
        return ModelRecords(Path(self.settings.backend_cache_dir) / RECORDS_DIR)

    @cached_property
    def dino(self) -> LoadedDino:
        with self._lock:
            return load_dino(self.settings.dino_model or self.preset.dino_model, self.device,
                             self.dtype, self.records)

    @cached_property
    def clip(self) -> LoadedClip:
        with self._lock:
            return load_clip(self.clip_model, self.clip_pretrained, self.device, self.dtype,
                             self.records)

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
        with self._lock:
            sam = load_sam(self.settings.sam_model or DEFAULT_SAM_MODEL, self.device, dtype)
        return SamRefiner(sam)

    @property
    def clip_model(self) -> str:
        return self.settings.clip_model or self.preset.clip_model

    @property
    def clip_pretrained(self) -> str | None:
        if self.clip_model.startswith("local-dir:"):
            return None
        return self.settings.clip_pretrained or self.preset.clip_pretrained


class Services:
    """Everything one process shares (see the module docstring).

    settings: the process's settings; pipeline_overrides: TagPipeline knobs that replace the
    preset's and the settings' (the evaluator's ``--image-size``, a benchmark's CRF switch).
    """

    def __init__(self, settings: Settings, *,
                 pipeline_overrides: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        self.preset = get_preset(settings.preset)
        self.pipeline_overrides = dict(pipeline_overrides or {})
        self.models = Models(settings, self.preset)
        self._lock = threading.RLock()  # loading the engine and swapping knowledge
        # The store has its own lock: /setup reads the model version from the store while the
        # engine loads (which holds ``_lock`` for seconds), and Label Studio gives /setup 3 s.
        self._store_lock = threading.Lock()
        self._store = None
        self._pipeline: TagPipeline | None = None
        self._knowledge: Knowledge | None = None
        self._loaded = threading.Event()
        self._loader: threading.Thread | None = None
        # Guards only the background loader thread: never the engine lock, which the loader
        # holds for the whole load (a probe or /predict must not wait for it).
        self._loader_lock = threading.Lock()
        self._last_version: str | None = None
        self.cost = CostEstimate()  # seconds per task, shared by /predict and the job worker
        self.fetcher = MediaFetcher(settings)
        self.label_studio = LabelStudioClient.from_settings(settings)
        self.predictor = Predictor(self, FeatureCache(settings.feature_cache_mb * 2**20))
        self.snapper = LabelSnapper(self._encode_texts, settings.guided_threshold,
                                    settings.guided_fallback, below=settings.guided_below,
                                    logit_scale=lambda: clip_temperature(self.models.clip))
        self.serializer = Serializer(max_regions=settings.max_regions,
                                     guided=snapping_labeler(self.snapper),
                                     polygon_tolerance=settings.polygon_tolerance)
        self.tasks = TaskPredictor(self.fetcher, self.predictor, self.serializer,
                                   ServedRecorder(lambda: self.store))
        self.interactive = InteractivePredictor(self)
        self._jobs = None  # built on first use: `tag-backend predict` never needs the queue
        self._jobs_lock = threading.Lock()

    @property
    def jobs(self):
        """The job queue and this process's worker (:class:`~tag_backend.jobs.service.JobService`).

        Built on first use: the worker's imports (Label Studio's label-config parser among them)
        cost a command that predicts files about half a second.
        """
        with self._jobs_lock:
            if self._jobs is None:
                from .jobs.push import LabelStudioPusher
                from .jobs.service import JobService

                self._jobs = JobService(self, lambda: self.store,
                                        LabelStudioPusher(client=self.label_studio))
            return self._jobs

    # --------------------------------------------------------------- store and text
    @property
    def store(self):
        """The concept store (opened, and migrated, on first use)."""
        with self._store_lock:
            if self._store is None:
                from database_tools.store import Store

                self._store = Store(self.settings.resolved_db_url, **self.settings.store_options)
            return self._store

    @cached_property
    def stored_text_encoder(self):
        """CLIP text tower behind the per-(encoder, text) embedding cache in the store."""
        from database_tools.embedding import CachedTextEncoder

        return CachedTextEncoder(self.store, self.models.clip.text_encoder())

    @cached_property
    def text_encoder(self):
        """The stored cache behind a bounded in-process cache (hot path: naming)."""
        from .text.cache import MemoryCachedEncoder

        return MemoryCachedEncoder(self.stored_text_encoder)

    def _encode_texts(self, texts):
        return self.text_encoder.encode(texts)

    # --------------------------------------------------------------- engine
    def pipeline(self) -> TagPipeline:
        """The pipeline (models and the first knowledge snapshot are loaded on first call)."""
        pipeline = self._pipeline
        if pipeline is not None:
            return pipeline
        with self._lock:
            if self._pipeline is None:
                _ = self.models.dino, self.models.clip  # missing weights fail before the store
                knowledge = self._read_knowledge()
                self._knowledge = knowledge
                self._pipeline = self._build_pipeline(knowledge)
                self._loaded.set()
            return self._pipeline

    def _pipeline_knobs(self) -> dict[str, Any]:
        s = self.settings
        knobs = self.preset.pipeline_kwargs()
        if s.dense_method:
            knobs["dense_method"] = s.dense_method
        knobs.update(exemplar_threshold=s.exemplar_threshold, max_image_pixels=s.max_image_pixels)
        knobs.update(self.pipeline_overrides)
        return knobs

    @cached_property
    def output_fingerprint(self) -> str:
        """Hash of everything besides ``model_version`` that shapes a served prediction: the
        engine knobs after settings and overrides, both models, mask cleaning, region cap,
        polygon tolerance and guided-mode choice. Part of every stored prediction's key, so a
        restart with other settings never answers from predictions made with the old ones."""
        s, serializer = self.settings, self.serializer
        shaping = {
            "knobs": self._pipeline_knobs(), "dino": self.settings.dino_model or self.preset.dino_model,
            "clip": [self.models.clip_model, self.models.clip_pretrained], "refine": s.refine,
            "max_regions": serializer.max_regions, "polygon_tolerance": serializer.polygon_tolerance,
            "cleaning": dataclasses.asdict(serializer.cleaning),
            "guided": [s.guided_threshold, s.guided_fallback, s.guided_below],
        }
        text = json.dumps(shaping, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _build_pipeline(self, knowledge: Knowledge) -> TagPipeline:
        models, knobs = self.models, self._pipeline_knobs()
        return TagPipeline(models.dino, models.clip, knowledge.index, forwards=models.forwards,
                           text_encoder=self.text_encoder, exemplars=knowledge.exemplars,
                           aliases=knowledge.aliases, refiner=models.refiner, **knobs)

    def _read_knowledge(self) -> Knowledge:
        s = self.settings
        return read_knowledge(self.store, self.stored_text_encoder, self.models.clip.encoder_id,
                              index_dir=s.resolved_index_dir, vocabulary=s.default_vocabulary,
                              alias_min_count=s.alias_min_count, index_store=s.index_store)

    def _next_knowledge(self, version: int) -> Knowledge:
        s = self.settings
        return refresh_knowledge(self._knowledge, self.store, self.stored_text_encoder,
                                 self.models.clip.encoder_id, index_dir=s.resolved_index_dir,
                                 alias_min_count=s.alias_min_count, version=version)

    def knowledge(self) -> Knowledge:
        """The current knowledge snapshot (loading models and knowledge on first call)."""
        self.pipeline()
        return self._knowledge

    def loaded_knowledge(self) -> Knowledge | None:
        """The current snapshot, or None while the models are not loaded (never loads)."""
        return self._knowledge if self._pipeline is not None else None

    def models_loaded(self) -> bool:
        """Whether models, store and knowledge are loaded (predictions start at once)."""
        return self._pipeline is not None

    def wait_until_loaded(self, timeout: float) -> bool:
        """Start loading in the background (once) and wait at most ``timeout`` seconds for it.

        Never waits for the engine lock (the loader holds it while loading), so ``/ready`` and
        ``/predict`` keep their bounds on a replica that is still loading its models.
        """
        if self.models_loaded():
            return True
        with self._loader_lock:
            if not self.models_loaded() and (self._loader is None
                                             or not self._loader.is_alive()):
                self._loader = threading.Thread(target=self._load, name="tag-engine-load",
                                                daemon=True)
                self._loader.start()
        self._loaded.wait(timeout)
        return self.models_loaded()

    def _load(self) -> None:
        try:
            self.pipeline()
            logger.info("engine ready: %s", self.model_version())
        except Exception:  # noqa: BLE001 - reported again by the next use of the engine
            logger.exception("loading the engine failed")

    def refresh(self, force: bool = False) -> bool:
        """Pick up concept-database changes made by this or another process.

        Cheap when nothing changed (one small query); a no-op until the models are loaded.
        Otherwise only what changed since the current snapshot is read (delta index, exemplar
        index, aliases, release; a new base index version when ``tag-db compact`` published
        one). ``force``: also when the version did not move (after this process rewrote the
        index files). Returns True when a new snapshot was swapped in.
        """
        if self._pipeline is None:
            return False
        version = self.store.db_version()
        with self._lock:
            if not force and version == self._knowledge.db_version:
                return False
            knowledge = self._next_knowledge(version)
            self._knowledge = knowledge  # the swap: one assignment
        logger.debug("knowledge at store sequence %s (release r%s)", knowledge.db_version,
                     knowledge.release)
        return True

    # --------------------------------------------------------------- versions
    def version_for(self, knowledge: Knowledge) -> str:
        """The Label Studio ``model_version`` of predictions named with ``knowledge``."""
        return self.release_version(knowledge.release)

    def release_version(self, release: int) -> str:
        """``model_version`` of knowledge release ``release``: engine version, preset, encoder
        and ``r<release>`` — not the store sequence number (docs/learning.md)."""
        encoder = self.models.clip_model.replace("local-dir:", "local-").rsplit("/", 1)[-1]
        refine = "-sam2" if self.settings.refine == "sam2" else ""
        return f"tag-{__version__}-{self.preset.name}{refine}-{encoder}-r{release}"

    def model_version(self) -> str:
        """Engine version + preset + encoder + knowledge release.

        With the models loaded: the version of the current snapshot (no query). Before: read
        from the store; if the store is unreachable, the last known version (or a placeholder
        naming the outage), so ``/setup`` still answers.
        """
        knowledge = self.loaded_knowledge()
        if knowledge is not None:
            return self.version_for(knowledge)
        try:
            from database_tools.releases import current_release

            self._last_version = self.release_version(current_release(self.store).number)
        except Exception as exc:  # noqa: BLE001 - any driver error: report, answer anyway
            logger.warning("concept database unreachable for model_version: %s",
                           str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            if self._last_version is None:
                return f"tag-{__version__}-{self.preset.name}-db-unavailable"
        return self._last_version

    # --------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Stop the job worker and close the store."""
        with self._jobs_lock:
            jobs = self._jobs
        if jobs is not None:
            jobs.stop()
        with self._store_lock:
            if self._store is not None:
                self._store.close()
