"""`tag-backend predict` end to end on the tiny models: good and bad files, output format, exit codes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from scenes import flat_shapes
from tag_backend.cli import main


@pytest.fixture()
def env(tiny_models_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("cli-data")
    return {"TAG_DINO_MODEL": tiny_models_dir["dino"], "TAG_CLIP_MODEL": tiny_models_dir["clip"],
            "TAG_DATA_DIR": str(data), "TAG_DEVICE": "cpu", "TAG_DTYPE": "float32"}


def test_predict_writes_label_studio_tasks_and_reports_bad_files(env, tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    flat_shapes(seed=0)[0].resize((320, 240)).save(images / "a.png")
    flat_shapes(seed=1)[0].convert("RGBA").save(images / "sub" / "b.png")
    (images / "empty.jpg").write_bytes(b"")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("RGB", (5, 5)).save(images / "tiny.png")
    out = tmp_path / "tasks.json"
    result = CliRunner().invoke(main, ["predict", str(images), str(tmp_path / "missing.jpg"), "--out", str(out),
                                       "--document-root", str(tmp_path), "--quiet"], env=env)
    assert result.exit_code == 1, result.output
    assert "2 image(s) predicted" in result.output and "4 failed" in result.output
    for name, reason in [("empty.jpg", "empty file"), ("broken.png", "corrupt"), ("tiny.png", "smaller than one"),
                         ("missing.jpg", "no such file")]:
        assert any(name in line and reason in line for line in result.output.splitlines()), (name, result.output)
    tasks = json.loads(out.read_text())
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=images/a.png",
                                                   "/data/local-files/?d=images/sub/b.png"]
    for task, size in zip(tasks, [(240, 320), (448, 448)]):
        (prediction,) = task["predictions"]
        assert prediction["model_version"].startswith("tag-") and prediction["result"]
        brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
        texts = {r["id"]: r["value"]["text"][0] for r in prediction["result"] if r["type"] == "textarea"}
        cover = np.zeros(size, np.int32)
        for item in brushes:
            assert (item["original_height"], item["original_width"]) == size
            mask = decode_rle(item["value"]["rle"]).reshape(size[0], size[1], 4)[:, :, 3]
            cover += mask > 127
            assert texts[item["id"]], "every region carries its free-form name"
        assert cover.max() <= 1 and cover.mean() > 0.9


def test_predict_as_its_own_process_ends_with_its_exit_code_and_output(env, tmp_path):
    """Run as the command line, `predict` ends without the interpreter's teardown: the exit
    code, the messages and the task list must all still be there."""
    import os
    import subprocess
    import sys

    flat_shapes(seed=3)[0].save(tmp_path / "ok.png")
    command = [sys.executable, "-m", "tag_backend", "predict", str(tmp_path / "ok.png"), "--out",
               str(tmp_path / "t.json"), "--quiet"]
    environment = {**os.environ, **env, "TAG_BACKEND": "torch"}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "1 image(s) predicted" in done.stdout and len(json.loads((tmp_path / "t.json").read_text())) == 1
    done = subprocess.run(command[:4] + [str(tmp_path / "missing.png")] + command[5:], env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "FAILED" in done.stderr and "0 image(s) predicted" in done.stdout


def test_predict_all_ok_exit_zero_and_help(env, tmp_path):
    flat_shapes(seed=2)[0].save(tmp_path / "ok.png")
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "ok.png"), "--out", str(tmp_path / "t.json"),
                                       "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 image(s) predicted" in result.output and "0 failed" in result.output
    for command in (["--help"], ["predict", "--help"], ["models", "--help"]):
        assert CliRunner().invoke(main, command).exit_code == 0


def test_missing_weights_fail_clearly(tmp_path):
    flat_shapes()[0].save(tmp_path / "ok.png")
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "ok.png"), "--out", str(tmp_path / "t.json"),
                                       "--dino", str(tmp_path / "no-such-dir"), "--clip", "local-dir:/nope"],
                                env={"TAG_DATA_DIR": str(tmp_path / "d")})
    assert result.exit_code != 0
    assert "cannot load DINOv2 weights" in result.output and "TAG_DINO_MODEL" in result.output


def test_corrupt_index_is_reported_or_rebuilt_never_silently_used(env, tmp_path):
    """A damaged CURRENT index is detected (checksum) and a new version is built from the store."""
    from pathlib import Path

    flat_shapes()[0].save(tmp_path / "ok.png")
    args = ["predict", str(tmp_path / "ok.png"), "--out", str(tmp_path / "t.json"), "--quiet"]
    env = {**env, "TAG_DATA_DIR": str(tmp_path / "data")}
    assert CliRunner().invoke(main, args, env=env).exit_code == 0
    index_files = [p for p in Path(tmp_path / "data" / "index").rglob("*.faiss")] + \
        [p for p in Path(tmp_path / "data" / "index").rglob("*.index")]
    assert index_files
    for p in index_files:
        p.write_bytes(b"garbage")
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output


def test_models_command_lists_presets():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    assert "paper" in result.output and "ViT-L-14-quickgelu" in result.output and "TAG_DINO_MODEL" in result.output


def test_dense_method_is_selectable_from_the_cli(env, tmp_path, monkeypatch):
    from tag_backend import predict_files as pf

    used = []
    real = pf.predict_files

    def spy(services, *args, **kwargs):
        used.append(services)
        return real(services, *args, **kwargs)

    monkeypatch.setattr(pf, "predict_files", spy)
    flat_shapes()[0].save(tmp_path / "ok.png")
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "ok.png"), "--out", str(tmp_path / "t.json"),
                                       "--quiet", "--dense-method", "naclip"], env=env)
    assert result.exit_code == 0, result.output
    assert [s.pipeline().dense_method for s in used] == ["naclip"]
    assert CliRunner().invoke(main, ["predict", "x", "--out", "y", "--dense-method", "maskclip"]).exit_code == 2


def test_predict_files_feeds_batches_and_isolates_a_failing_image(tiny_services_session, tmp_path, monkeypatch):
    from tag_backend.predict_files import predict_files

    paths = []
    for i, size in enumerate([(320, 240), (448, 448), (5, 5), (300, 300), (448, 448)]):
        paths.append(tmp_path / f"{i}.png")
        flat_shapes(seed=i)[0].resize(size).save(paths[-1])
    predictor = tiny_services_session.predictor
    calls = []
    real = predictor.predict
    monkeypatch.setattr(predictor, "predict", lambda images, **kw: (calls.append(len(images)),
                                                                    real(images, **kw))[1])
    report = predict_files(tiny_services_session, [str(p) for p in paths], lambda p: p.name,
                           progress=False, batch_size=3)
    # [0, 1, 2] fails as a batch (2 is smaller than a patch) and is retried image by image.
    assert calls == [3, 1, 1, 1, 2]
    assert [t["data"]["image"] for t in report.tasks] == ["0.png", "1.png", "3.png", "4.png"]
    assert [(path.rsplit("/", 1)[-1], "smaller than one" in why) for path, why in report.failures] == [("2.png", True)]
