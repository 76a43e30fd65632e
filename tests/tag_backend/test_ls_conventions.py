"""Label Studio ML backend conventions: /setup before the labeling interface exists, model_skip."""

from __future__ import annotations

import logging

import pytest

from tag_backend.app import create_app
from tag_backend.ls.controls import parse_label_config
from tag_backend.ls.errors import LabelConfigError, LabelConfigWithoutImage

from ls_helpers import shared_services

NEW_PROJECT = "<View></View>"


@pytest.fixture()
def client(tiny_services_session, tmp_path):
    return create_app(services=shared_services(tiny_services_session, tmp_path / "srv"), start_worker=False).test_client()


@pytest.mark.parametrize("schema", [NEW_PROJECT, "<View><Header value='soon'/></View>"])
def test_setup_accepts_a_project_without_an_image_yet(client, tiny_services_session, caplog, schema):
    with caplog.at_level(logging.WARNING, logger="tag_backend.app"):
        r = client.post("/setup", json={"project": "7.1700000000", "schema": schema})
    assert r.status_code == 200
    assert r.json == {"model_version": tiny_services_session.model_version()}
    assert any("project 7" in m and "<Image>" in m for m in caplog.messages), caplog.messages


def test_predict_still_refuses_a_config_without_an_image(client):
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "x.png"}}],
                                      "label_config": NEW_PROJECT, "project": "7.1"})
    assert r.status_code == 400 and "<Image>" in r.json["detail"]


def test_setup_still_refuses_an_image_config_without_brush_labels(client):
    r = client.post("/setup", json={"project": "7.1", "schema": "<View><Image name='i' value='$i'/></View>"})
    assert r.status_code == 400 and "BrushLabels" in r.json["detail"]


def test_empty_and_imageless_configs_are_the_no_image_error():
    for config in ("", NEW_PROJECT):
        with pytest.raises(LabelConfigWithoutImage):
            parse_label_config(config)


CONFIG_TWO_BRUSHES = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="manual" toName="image" model_skip="true"><Label value="person"/><Label value="car"/></BrushLabels>
  <BrushLabels name="tag" toName="image"><Label value="object"/></BrushLabels>
  <TextArea name="name" toName="image" perRegion="true"/>
</View>"""


def test_model_skip_brush_is_left_to_annotators():
    layout = parse_label_config(CONFIG_TWO_BRUSHES)
    assert layout.brush_name == "tag" and layout.text_name == "name" and not layout.guided_labels


def test_model_skip_on_the_only_brush_is_a_clear_error():
    config = CONFIG_TWO_BRUSHES.replace('<BrushLabels name="tag" toName="image">', '<BrushLabels name="tag" toName="image" model_skip="true">')
    with pytest.raises(LabelConfigError, match="model_skip"):
        parse_label_config(config)


def test_model_skip_textarea_is_not_filled():
    config = CONFIG_TWO_BRUSHES.replace('perRegion="true"/>', 'perRegion="true" model_skip="true"/>')
    layout = parse_label_config(config)
    assert layout.text_name is None and layout.guided_labels == ("object",)


def test_smart_only_tools_are_prompts_not_outputs():
    """The interactive config's smart-only keypoint and box tools carry prompts: the backend
    fills the brush (and its TextArea) only, never a box per region into the prompt tool."""
    from tag_backend.ls import interactive_label_config
    from tag_backend.ls.controls import parse_label_config

    layout = parse_label_config(interactive_label_config())
    assert layout.brush_name == "tag" and layout.text_name == "name"
    assert layout.rectangle_name is None and layout.polygon_name is None
    manual_box = interactive_label_config().replace('smart="true" smartOnly="true">\n    <Label value="object" background="#FF7F0E"/>\n  </RectangleLabels>',
                                                    '>\n    <Label value="object" background="#FF7F0E"/>\n  </RectangleLabels>')
    assert parse_label_config(manual_box).rectangle_name == "box"
