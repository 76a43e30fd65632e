"""Shared fixtures: tiny random-weight models of the real architectures, saved to a temp dir and
loaded through the normal loaders (exactly like a user's local checkpoint), and settings that
point the whole product at them."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

from pg_server import db_url, new_pg_database, postgres_server, store  # noqa: F401  (fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache of exported OpenVINO / ONNX graphs for the whole session (and its subprocesses):
# entries are keyed by weights, input size and method, so sharing it is exact, and each graph is
# exported once instead of once per test.
if "TAG_BACKEND_CACHE" not in os.environ:
    os.environ["TAG_BACKEND_CACHE"] = tempfile.mkdtemp(prefix="tag-compiled-")
    atexit.register(shutil.rmtree, os.environ["TAG_BACKEND_CACHE"], True)
COMPILED_CACHE = os.environ["TAG_BACKEND_CACHE"]


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    from tag_backend.random_models import save_random_clip, save_random_dino

    root = tmp_path_factory.mktemp("tiny-models")
    save_random_dino(root / "dino")
    clip = save_random_clip(root / "clip")
    return {"dino": str(root / "dino"), "clip": clip, "root": root}


@pytest.fixture(scope="session")
def tiny_sam_dir(tiny_models_dir) -> str:
    """A tiny random SAM 2 saved with ``save_pretrained`` (loaded through the real loader)."""
    from tag_backend.random_models import save_random_sam2

    return str(save_random_sam2(tiny_models_dir["root"] / "sam2"))


@pytest.fixture(scope="session")
def tiny_dino_dir(tiny_models_dir) -> str:
    return tiny_models_dir["dino"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_models_dir) -> str:
    """``local-dir:DIR`` spec of the tiny open_clip model."""
    return tiny_models_dir["clip"]


@pytest.fixture()
def tiny_settings(tiny_models_dir, tmp_path):
    """Settings using the tiny models and a fresh data dir (SQLite store, index) per test."""
    from tag_backend.config import Settings

    return Settings(preset="fast", dino_model=tiny_models_dir["dino"], clip_model=tiny_models_dir["clip"],
                    device="cpu", dtype="float32", data_dir=str(tmp_path / "data"),
                    backend_cache_dir=COMPILED_CACHE)


@pytest.fixture(scope="session")
def tiny_services_session(tiny_models_dir, tmp_path_factory):
    """One services object (pipeline + store + default-vocabulary index) shared by read-only
    tests."""
    from tag_backend.config import Settings
    from tag_backend.services import Services

    data = tmp_path_factory.mktemp("services-data")
    settings = Settings(preset="fast", dino_model=tiny_models_dir["dino"], clip_model=tiny_models_dir["clip"],
                        device="cpu", dtype="float32", data_dir=str(data), backend_cache_dir=COMPILED_CACHE)
    return Services(settings)
