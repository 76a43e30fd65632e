"""Guided mode: labelling regions with the project's labels (names, zero-shot CLIP, threshold)."""
from __future__ import annotations

import numpy as np
import pytest

from tag_backend.ls.controls import parse_label_config
from tag_backend.ls.errors import LabelConfigError
from tag_backend.ls.guided import PROMPT_TEMPLATES, LabelSnapper, ProjectLabel

WORDS = ("cat", "dog", "car", "truck", "tree")


def word_encoder(calls: list | None = None, dim: int = 8):
    """A text encoder whose embedding of a prompt is the unit axis of the word it mentions,
    blurred by a template-dependent offset (so ensembling matters but cannot flip the answer)."""

    def encode(texts):
        if calls is not None:
            calls.append(list(texts))
        out = np.zeros((len(texts), dim), np.float32)
        for row, text in zip(out, texts):
            hits = [i for i, w in enumerate(WORDS) if w in text.split() or w + "." in text.split()]
            row[hits[0] if hits else len(WORDS)] = 1.0
            row[-1] = 0.05 * (len(text.split()[0]) % 5)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return encode


def axis(i: int, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


LABELS = (ProjectLabel("cat"), ProjectLabel("dog"), ProjectLabel("car", ("truck", "van")))


def test_region_embedding_picks_the_right_label():
    snapper = LabelSnapper(word_encoder(), threshold=0.5, fallback=None)
    snaps = snapper.snap(["kitten", "puppy", "sedan"], [axis(0), axis(1), axis(2)], LABELS)
    assert [s.label for s in snaps] == ["cat", "dog", "car"]
    assert all(s.method == "zero-shot" and s.score > 0.99 for s in snaps)


def test_synonyms_and_exact_names_win_before_clip():
    snapper = LabelSnapper(word_encoder(), threshold=0.99, fallback=None, below="drop")
    # The image embedding points at "dog", but the free-form name is a synonym of "car".
    snaps = snapper.snap([" Truck ", "DOG", "van"], [axis(1), axis(0), None], LABELS)
    assert [(s.label, s.method, s.score) for s in snaps] == [
        ("car", "name", 1.0), ("dog", "name", 1.0), ("car", "name", 1.0)]


def test_label_vectors_are_a_prompt_ensemble_encoded_once_per_label_set():
    calls: list = []
    snapper = LabelSnapper(word_encoder(calls), threshold=0.5, fallback=None)
    for _ in range(3):
        snapper.snap(["x"], [axis(0)], LABELS)
    assert len(calls) == 1
    # cat, dog, car + its two synonyms, each in every template.
    assert len(calls[0]) == 5 * len(PROMPT_TEMPLATES)
    assert "a photo of a cat." in calls[0] and "art of the van." in calls[0]


def test_threshold_fallback_keep_and_drop():
    between = (axis(0) + axis(1)) / np.sqrt(2)  # as close to cat as to dog: p ~ 0.5 each
    labels = LABELS[:2] + (ProjectLabel("other"),)
    kept = LabelSnapper(word_encoder(), threshold=0.6, fallback=None, below="keep")
    snap = kept.snap(["lynx"], [between], labels)[0]
    assert (snap.label, snap.method) == ("lynx", "kept") and 0.3 < snap.score < 0.6
    dropped = LabelSnapper(word_encoder(), threshold=0.6, fallback=None, below="drop")
    assert dropped.snap(["lynx"], [between], labels)[0].label is None
    fallback = LabelSnapper(word_encoder(), threshold=0.6, fallback="other", below="drop")
    assert fallback.snap(["lynx"], [between], labels)[0].label == "other"
    # The control's model_score_threshold overrides the setting.
    assert kept.snap(["lynx"], [between], labels, threshold=0.3)[0].method == "zero-shot"


def test_region_without_embedding_is_scored_by_its_name():
    snapper = LabelSnapper(word_encoder(), threshold=0.5, fallback=None)
    snap = snapper.snap(["a sleepy cat"], [None], LABELS)[0]
    assert (snap.label, snap.method) == ("cat", "zero-shot")


def test_bad_arguments():
    enc = word_encoder()
    for kwargs in (dict(threshold=1.5), dict(threshold=0.5, below="maybe"),
                   dict(threshold=0.5, logit_scale=0), dict(threshold=0.5, templates=("photo",))):
        with pytest.raises(ValueError):
            LabelSnapper(enc, fallback=None, **kwargs)
    with pytest.raises(ValueError, match="label"):
        LabelSnapper(enc, 0.5, None).snap(["x"], [axis(0)], ())
    with pytest.raises(ValueError, match="embeddings"):
        LabelSnapper(enc, 0.5, None).snap(["x"], [], LABELS)


def test_real_clip_labels_its_own_label_embeddings(tiny_services_session):
    """Through the real (tiny) CLIP text tower and temperature: a region whose embedding is a
    label's prompt-ensemble embedding gets that label."""
    snapper = tiny_services_session.snapper
    assert abs(snapper.logit_scale - 1 / 0.07) < 1e-3  # open_clip's initial temperature
    labels = tuple(ProjectLabel(w) for w in ("cat", "dog", "tree"))
    vectors = snapper.label_vectors(labels)
    snaps = snapper.snap(["x", "y", "z"], list(vectors), labels, threshold=0.0)
    assert [s.label for s in snaps] == ["cat", "dog", "tree"]
    probs = snapper.probabilities(vectors, labels)
    assert np.allclose(probs.sum(1), 1.0) and (np.argmax(probs, 1) == [0, 1, 2]).all()


def test_config_predicted_values_and_model_score_threshold():
    layout = parse_label_config(
        '<View><Image name="img" value="$photo"/>'
        '<BrushLabels name="b" toName="img" model_score_threshold="0.35">'
        '<Label value="car" predicted_values="truck, van ,car, "/><Label value="dog"/>'
        '</BrushLabels></View>')
    assert layout.project_labels == (ProjectLabel("car", ("truck", "van")), ProjectLabel("dog"))
    assert layout.score_threshold == 0.35
    assert parse_label_config(
        '<View><Image name="img" value="$p"/><BrushLabels name="b" toName="img">'
        '<Label value="a"/><Label value="b"/></BrushLabels></View>').score_threshold is None
    for bad in ("1.5", "high", "-0.1"):
        with pytest.raises(LabelConfigError, match="model_score_threshold"):
            parse_label_config(
                f'<View><Image name="img" value="$p"/><BrushLabels name="b" toName="img" '
                f'model_score_threshold="{bad}"><Label value="a"/></BrushLabels></View>')
