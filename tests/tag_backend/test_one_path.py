"""Every caller goes image -> Predictor -> (Serializer) and nothing else builds result items:
``/predict``, the job worker, ``tag-backend predict`` and the evaluator."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import tag_backend
from scenes import flat_shapes
from tag_backend.ls import recommended_label_config
from tag_backend.ls.serializer import Serializer
from tag_backend.predictor import Predictor

from ls_helpers import copy_services, shared_services


@pytest.fixture()
def calls(monkeypatch):
    """Counts Predictor.predict images and Serializer items (the one path's two steps)."""
    counts = {"predict": 0, "serialize": 0}
    # placed_item is the serializer's one entry point (item() is a view of it).
    predict, item = Predictor.predict, Serializer.placed_item

    def counting_predict(self, images, **kwargs):
        images = list(images)
        counts["predict"] += len(images)
        return predict(self, images, **kwargs)

    def counting_item(self, *args, **kwargs):
        counts["serialize"] += 1
        return item(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", counting_predict)
    monkeypatch.setattr(Serializer, "placed_item", counting_item)
    return counts


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"img{seed}.png"
        flat_shapes(96, seed=seed)[0].save(path)
        paths.append(path)
    return paths


def _tasks(images: list[Path]) -> list[dict]:
    return [{"id": i + 1, "data": {"image": str(p)}} for i, p in enumerate(images)]


def test_predict_route_goes_through_predictor_and_serializer(tiny_services_session, tmp_path,
                                                            images, calls):
    from tag_backend.app import create_app

    services = shared_services(tiny_services_session, tmp_path / "srv",
                               allowed_local_roots=str(tmp_path), predict_budget_seconds=1e9)
    client = create_app(services=services, start_worker=False).test_client()
    r = client.post("/predict", json={"tasks": _tasks(images),
                                      "label_config": recommended_label_config()})
    assert r.status_code == 200 and all(item["result"] for item in r.json["results"])
    assert calls == {"predict": 2, "serialize": 2}


def test_job_worker_goes_through_predictor_and_serializer(tiny_services_session, tmp_path,
                                                         images, calls):
    from tag_backend.jobs.worker import Worker, WorkerOptions

    # A copy of the session database: the job tables are written.
    services = copy_services(tiny_services_session, tmp_path / "srv",
                             allowed_local_roots=str(tmp_path))
    queue = services.jobs.queue
    job = queue.create_job("prelabel", _tasks(images), label_config=recommended_label_config(),
                           model_version="x", push=False)
    worker = Worker(queue, services, None, WorkerOptions(batch_size=2, poll_seconds=0.1,
                                                         push=False)).start()
    try:
        deadline = time.time() + 600
        while not queue.progress(job).settled and time.time() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()
    assert queue.progress(job).done == 2
    assert calls == {"predict": 2, "serialize": 2}


def test_cli_predict_goes_through_predictor_and_serializer(tiny_services_session, tmp_path,
                                                          images, calls):
    from tag_backend.cli import main

    tiny_services_session.pipeline()
    s = tiny_services_session.settings
    env = {"TAG_DINO_MODEL": s.dino_model, "TAG_CLIP_MODEL": s.clip_model, "TAG_DEVICE": "cpu",
           "TAG_DTYPE": "float32", "TAG_DATA_DIR": str(tmp_path / "d"),
           "TAG_DB_URL": s.resolved_db_url, "TAG_INDEX_DIR": s.resolved_index_dir}
    result = CliRunner().invoke(main, ["predict", *map(str, images), "--out",
                                       str(tmp_path / "t.json"), "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    assert calls == {"predict": 2, "serialize": 2}


def test_evaluator_goes_through_the_predictor(tiny_services_session, tmp_path, calls):
    from tag_backend.eval.runner import EvalConfig, run_eval
    from tag_backend.eval.synthetic import write_synthetic

    services = shared_services(tiny_services_session, tmp_path / "srv")
    root = write_synthetic(tmp_path / "syn", count=2, size=112)
    config = EvalConfig(dataset="synthetic", root=root, report_dir=tmp_path / "rep", limit=2,
                        grid_images=0, progress=False)
    result = run_eval(config, services.settings, services)
    assert result.summary["images"] == 2
    assert calls["predict"] == 2


def test_only_the_serializer_builds_result_items():
    """No second path from regions to Label Studio JSON: only ls/serializer.py writes the
    ``brushlabels``/``textarea`` result items and calls the brush RLE encoder."""
    root = Path(tag_backend.__file__).parent
    writers = set()
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r'"type":\s*"(brushlabels|textarea)"', text) or (
                "mask_to_rle(" in text and path.name != "rle.py" and "bench" not in path.name):
            writers.add(path.relative_to(root).as_posix())
    assert writers == {"ls/serializer.py"}
