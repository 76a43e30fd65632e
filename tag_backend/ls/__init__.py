"""Label Studio ML backend: protocol, results, media fetching and the correction loop.

Only this package builds Label Studio JSON (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from pathlib import Path

LABEL_CONFIG_PATH = Path(__file__).with_name("label_config.xml")
INTERACTIVE_LABEL_CONFIG_PATH = Path(__file__).with_name("label_config_interactive.xml")


def recommended_label_config() -> str:
    """The recommended labeling config (brush mask + editable per-region name)."""
    return LABEL_CONFIG_PATH.read_text(encoding="utf-8")


def interactive_label_config() -> str:
    """The recommended config plus smart click and box tools (interactive labelling)."""
    return INTERACTIVE_LABEL_CONFIG_PATH.read_text(encoding="utf-8")
