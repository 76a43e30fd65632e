"""The shipped default vocabulary: size, normalisation, credits, reproducibility."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

VOCAB_DIR = Path(__file__).resolve().parents[2] / "database_tools" / "vocabulary"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_vocabulary.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("build_vocabulary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_vocabulary"] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def _names(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines()]


def test_merged_vocabulary_is_large_normalised_and_distinct() -> None:
    from database_tools.normalize import normalize_text

    names = _names(VOCAB_DIR / "concepts.txt")
    assert len(names) >= 3000
    assert len(set(names)) == len(names) and names == sorted(names)
    assert len({normalize_text(n) for n in names}) == len(names)
    for name in names:
        assert name == name.strip() and name == name.lower() and "_" not in name, name
        assert "  " not in name and name not in {"background", "other", "unlabeled"}, name
    for expected in ("aerosol can", "bow (weapon)", "sky", "road", "grass", "water", "wall",
                     "floor", "brick wall", "traffic light", "person", "tench"):
        assert expected in names, expected


def test_every_source_file_is_credited_and_merged() -> None:
    module = _load_script()
    credits = (VOCAB_DIR / "SOURCES.md").read_text(encoding="utf-8")
    merged = set(_names(VOCAB_DIR / "concepts.txt"))
    files = sorted(p.name for p in VOCAB_DIR.glob("*.txt") if p.name != "concepts.txt")
    assert {f"{s.name}.txt" for s in module.SOURCES} | {"stuff.txt"} == set(files)
    for name in files:
        row = next((line for line in credits.splitlines() if line.startswith(f"| `{name}`")), "")
        assert row, f"{name} not credited in SOURCES.md"
        count = int(row.split("|")[3])
        listed = _names(VOCAB_DIR / name)
        assert count == len(listed) > 0 and set(listed) <= merged
        assert re.search(r"Apache-2.0|MIT|CC BY|BSD", row), row
    assert f"**{len(merged)} names**" in credits


@pytest.mark.parametrize("raw,source,expected", [
    ("aerosol_can", "lvis", ["aerosol can"]),
    ("bow_(weapon)", "lvis", ["bow (weapon)"]),
    ("Band_Aid", "lvis", ["band aid"]),
    ("wall-brick", "coco_stuff", ["brick wall"]),
    ("sky-other", "coco_stuff", ["sky"]),
    ("Cabinet/shelf", "objects365", ["cabinet", "shelf"]),
    ("Lane Marking - Arrow (Left)", "mapillary", ["lane marking (arrow, left)"]),
    ("apse_indoor", "sun397", ["apse (indoor)"]),
    ("pottedplant", "pascal_context", ["potted plant"]),
    ("background", "ade20k", []),
])
def test_normalisation_policy(raw: str, source: str, expected: list[str]) -> None:
    assert _load_script().normalise(raw, source) == expected
