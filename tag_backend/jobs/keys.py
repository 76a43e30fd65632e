"""The key of one task's stored prediction (``/predict`` answers from it; jobs record under it)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def cache_key(model_version: str, label_config: str, task: Mapping[str, Any],
              output: str = "") -> str:
    """Key of one task's prediction: model_version + labeling config + task id + task data +
    ``output``, the fingerprint of the settings that shape a prediction besides the version
    (``Services.output_fingerprint``)."""
    digest = hashlib.sha256()
    config_hash = hashlib.sha256((label_config or "").encode()).hexdigest()
    payload = [str(model_version), config_hash, task.get("id"), task.get("data"), output]
    digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return digest.hexdigest()
