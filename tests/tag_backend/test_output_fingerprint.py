"""Stored predictions are keyed by the settings that shape them, not only by model_version:
a restart with another region cap, polygon tolerance, guided-mode choice or engine knob never
answers from predictions made with the old settings."""
from __future__ import annotations

import pytest

from tag_backend.services import Services


def _fingerprint(settings, **overrides) -> str:
    services = Services(settings, pipeline_overrides=overrides.pop("knobs", None))
    try:
        return services.output_fingerprint
    finally:
        services.close()


def test_same_settings_give_the_same_fingerprint_in_every_process(tiny_settings):
    assert _fingerprint(tiny_settings) == _fingerprint(tiny_settings)


@pytest.mark.parametrize("change", [
    {"max_regions": 3}, {"polygon_tolerance": 0.0}, {"guided_below": "drop"},
    {"guided_threshold": 0.9}, {"exemplar_threshold": 0.5}, {"max_image_pixels": 12345},
    {"refine": "sam2"},
])
def test_a_setting_that_changes_the_output_changes_the_fingerprint(tiny_settings, change):
    assert _fingerprint(tiny_settings.replace(**change)) != _fingerprint(tiny_settings)


def test_an_engine_knob_override_changes_the_fingerprint(tiny_settings):
    assert _fingerprint(tiny_settings, knobs={"n_segments": 4}) != _fingerprint(tiny_settings)


def test_settings_that_do_not_shape_predictions_keep_it(tiny_settings):
    assert _fingerprint(tiny_settings.replace(port=9999, log_level="DEBUG")) == _fingerprint(
        tiny_settings)


def test_the_evaluator_cache_follows_the_crf_settings(tiny_settings):
    """The evaluator's prediction cache is keyed by the same fingerprint (it used to leave the
    CRF parameters out, so a run with other CRF settings read the old predictions)."""
    from tag_backend.eval.predict import config_hash
    from tag_backend.stages.crf import CrfParams

    hashes = []
    for knobs in (None, {"crf_params": CrfParams(iterations=1)}):
        services = Services(tiny_settings, pipeline_overrides=knobs)
        try:
            hashes.append(config_hash(services, {"dataset": "d"}))
        finally:
            services.close()
    assert hashes[0] != hashes[1]
