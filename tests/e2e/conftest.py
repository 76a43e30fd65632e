"""Fixtures shared by the Label Studio end-to-end modules."""
from __future__ import annotations

import pytest

from ls_server import TOKEN, start_label_studio, stop


@pytest.fixture(scope="package")
def ls_stack(tmp_path_factory, tiny_models_dir, tiny_services_session):
    """One real Label Studio for the modules that bring their own backends and CLI runs, and
    the backend environment on the tiny models (add ``TAG_DATA_DIR``: ``ls_server.data_dir_copy``)."""
    from tag_backend.ls import recommended_label_config

    root = tmp_path_factory.mktemp("e2e-stack")
    tiny_services_session.pipeline()  # warm data dir (default index), copied per process
    ls_proc, ls_url = start_label_studio(root)
    env = {
        "TAG_DINO_MODEL": tiny_models_dir["dino"],
        "TAG_CLIP_MODEL": tiny_models_dir["clip"],
        "TAG_DEVICE": "cpu",
        "TAG_DTYPE": "float32",
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "HF_HUB_OFFLINE": "1",
    }
    try:
        yield {
            "root": root,
            "ls": ls_url,
            "env": env,
            "config": recommended_label_config(),
            "warm": tiny_services_session.settings.data_dir,
        }
    finally:
        stop(ls_proc)

