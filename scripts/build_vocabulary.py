"""Rebuild the default concept vocabulary shipped in ``database_tools/vocabulary/``.

One-off, reproducible extraction of standard dataset class lists (facts, credited in
``SOURCES.md``). The lists are read from the *source text* of published wheels with ``ast`` —
nothing is imported or executed:

    pip download --no-deps mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0 -d /tmp/wheels
    python scripts/build_vocabulary.py --mmdet /tmp/wheels/mmdet-3.3.0-py3-none-any.whl \
        --mmseg /tmp/wheels/mmsegmentation-1.2.2-py3-none-any.whl \
        --mmpretrain /tmp/wheels/mmpretrain-1.2.0-py2.py3-none-any.whl

ImageNet-1k names come from the installed ``open_clip_torch`` wheel
(``open_clip/zero_shot_metadata.py``), located through package metadata, also without import.
Outputs: one ``<source>.txt`` per source (normalised display names, source order), the merged
``concepts.txt`` (normalised, de-duplicated, sorted) and ``SOURCES.md``.
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "database_tools" / "vocabulary"
MMDET_NAMES = "mmdet/evaluation/functional/class_names.py"
MMSEG_NAMES = "mmseg/utils/class_names.py"
MMPRE_NAMES = "mmpretrain/datasets/categories.py"


@dataclass(frozen=True)
class Source:
    """One class list: where it lives (wheel key, file, function) and how it is credited."""

    name: str
    wheel: str  # "mmdet" | "mmseg" | "mmpretrain" | "open_clip"
    path: str
    symbol: str  # function returning a list literal, or module-level list name
    title: str
    licence: str


SOURCES = [
    Source("coco", "mmdet", MMDET_NAMES, "coco_classes", "COCO 2017 detection (80)",
           "mmdet code Apache-2.0; COCO annotations CC BY 4.0"),
    Source("coco_stuff", "mmseg", MMSEG_NAMES, "cocostuff_classes", "COCO-Stuff (171)",
           "mmsegmentation code Apache-2.0; COCO-Stuff annotations CC BY 4.0"),
    Source("lvis", "mmdet", MMDET_NAMES, "lvis_classes", "LVIS v1 (1,203)",
           "mmdet code Apache-2.0; LVIS annotations CC BY 4.0"),
    Source("objects365", "mmdet", MMDET_NAMES, "objects365v2_classes", "Objects365 v2 (365)",
           "mmdet code Apache-2.0; Objects365 names (facts) from the mmdet list"),
    Source("open_images", "mmdet", MMDET_NAMES, "oid_v6_classes",
           "Open Images V6 boxable classes (601)",
           "mmdet code Apache-2.0; Open Images annotations CC BY 4.0"),
    Source("imagenet_det", "mmdet", MMDET_NAMES, "imagenet_det_classes",
           "ImageNet DET / ILSVRC detection (200)", "mmdet code Apache-2.0"),
    Source("ade20k", "mmseg", MMSEG_NAMES, "ade_classes", "ADE20K SceneParsing-150",
           "mmsegmentation code Apache-2.0; ADE20K annotations BSD-3-Clause"),
    Source("pascal_context", "mmseg", MMSEG_NAMES, "pcontext_classes", "Pascal Context-59",
           "mmsegmentation code Apache-2.0"),
    Source("cityscapes", "mmseg", MMSEG_NAMES, "cityscapes_classes", "Cityscapes-19",
           "mmsegmentation code Apache-2.0; class names only (facts)"),
    Source("mapillary", "mmseg", MMSEG_NAMES, "mapillary_v2_classes", "Mapillary Vistas v2 (124)",
           "mmsegmentation code Apache-2.0; class names only (facts)"),
    Source("sun397", "mmpretrain", MMPRE_NAMES, "SUN397_CATEGORIES", "SUN397 scenes (397)",
           "mmpretrain code Apache-2.0; class names only (facts)"),
    Source("places205", "mmpretrain", MMPRE_NAMES, "PLACES205_CATEGORIES", "Places205 scenes",
           "mmpretrain code Apache-2.0; class names only (facts)"),
    Source("food101", "mmpretrain", MMPRE_NAMES, "FOOD101_CATEGORIES", "Food-101",
           "mmpretrain code Apache-2.0; class names only (facts)"),
    Source("cub200", "mmpretrain", MMPRE_NAMES, "CUB_CATEGORIES", "CUB-200-2011 bird species",
           "mmpretrain code Apache-2.0; class names only (facts)"),
    Source("cifar100", "mmpretrain", MMPRE_NAMES, "CIFAR100_CATEGORIES", "CIFAR-100",
           "mmpretrain code Apache-2.0; class names only (facts)"),
    Source("dtd", "mmpretrain", MMPRE_NAMES, "DTD_CATEGORIES", "Describable Textures (47)",
           "mmpretrain code Apache-2.0; class names only (facts)"),
    Source("imagenet", "open_clip", "open_clip/zero_shot_metadata.py", "IMAGENET_CLASSNAMES",
           "ImageNet-1k (OpenAI CLIP clean names)", "open_clip_torch code MIT"),
]

# Names that are labels of nothing visual, or dataset bookkeeping.
DROP = {"background", "unlabeled", "unlabelled", "other", "void", "ego vehicle", "car mount"}

# Explicit fixes for names whose generic normalisation would read badly (typos, run-ons, slashes
# that are not alternatives). Keys are raw names, values the display names they become.
FIXES: dict[str, list[str]] = {
    "Cutting/chopping Board": ["cutting board", "chopping board"],
    "Tape Measur/ Ruler": ["tape measure", "ruler"],
    "Moniter/TV": ["monitor", "tv"],
    "Cigar/Cigarette ": ["cigar", "cigarette"],
    "monitor_(computer_equipment) computer_monitor": ["computer monitor"],
    "tvmonitor": ["tv monitor"],
    "pottedplant": ["potted plant"],
    "diningtable": ["dining table"],
    "window-blind": ["window blind"],
}

# Extra stuff / background concepts (project-authored) so every scene has a region name even
# without a caption database; most are also in COCO-Stuff / ADE20K.
STUFF = """sky cloud clouds wall floor ceiling road street sidewalk pavement grass lawn water sea
ocean lake river pond waterfall sand beach snow ice mountain hill rock stone dirt mud soil ground
field tree trees bush forest leaves foliage plant flower wood fog smoke fire sunlight shadow
building house roof carpet rug fence railing bridge tunnel path gravel
concrete asphalt window door curtain shelf counter table background wave waves desert cliff
canyon cave grassland meadow farmland vegetation hedge moss sunset horizon skyline
cityscape crowd"""
STUFF_MULTI = ["sky at night", "starry sky", "brick wall", "tile floor", "wooden floor",
               "stone wall", "dirt road", "gravel road", "parking lot", "railway track",
               "road marking", "traffic lane", "lane marking", "crosswalk", "street light"]


def stuff_names() -> list[str]:
    """Single-word stuff concepts plus the multi-word ones (order kept, duplicates dropped)."""
    words = [w for w in STUFF.split() if w not in {"brick", "tile", "background"}]
    return list(dict.fromkeys(words + STUFF_MULTI))


def read_list(text: str, symbol: str) -> list[str]:
    """Return the string list that ``symbol`` (function or assignment) holds in ``text``."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == symbol:
            for stmt in node.body:
                if isinstance(stmt, ast.Return):
                    return list(ast.literal_eval(stmt.value))
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == symbol for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise ValueError(f"{symbol} not found")


def source_text(src: Source, wheels: dict[str, Path]) -> str:
    """Read the file holding a source's list, from a wheel (zip) or the installed package."""
    if src.wheel == "open_clip":
        files = importlib.metadata.files("open_clip_torch") or []
        match = next(f for f in files if str(f) == src.path)
        return Path(match.locate()).read_text(encoding="utf-8")
    with zipfile.ZipFile(wheels[src.wheel]) as zf:
        return zf.read(src.path).decode("utf-8")


def _clean(name: str) -> str:
    name = unicodedata.normalize("NFKC", name).replace("_", " ").strip().lower()
    return re.sub(r"\s+", " ", name)


def _coco_stuff(name: str) -> str:
    """COCO-Stuff ``wall-brick`` -> ``brick wall``; ``sky-other``/``door-stuff`` -> ``sky``."""
    head, sep, mod = name.partition("-")
    if not sep:
        return name
    if mod in {"other", "stuff", "merged"}:
        return head
    return f"{mod} {head}"


def _dash_qualifier(name: str) -> str:
    """Mapillary ``Lane Marking - Arrow (Left)`` -> ``lane marking (arrow, left)``."""
    head, _, tail = name.partition(" - ")
    quals = [q.strip() for q in re.split(r"[()]", tail) if q.strip()]
    head_quals = re.findall(r"\(([^)]*)\)", head)
    head = re.sub(r"\s*\([^)]*\)", "", head).strip()
    return f"{head} ({', '.join(head_quals + quals)})"


def normalise(raw: str, source: str) -> list[str]:
    """Display names for one raw class name (see SOURCES.md, "Normalisation policy")."""
    if raw in FIXES:
        return FIXES[raw]
    if source == "objects365" and "/" in raw:
        return [n for part in raw.split("/") for n in normalise(part, source)]
    if source in {"sun397", "places205"}:
        raw = re.sub(r"[_/](indoor|outdoor)$", r" (\1)", raw).replace("/", " ")
    if source == "coco_stuff":
        raw = _coco_stuff(raw)
    if " - " in raw:
        raw = _dash_qualifier(raw)
    name = _clean(raw)
    name = re.sub(r"\s*\(\s*", " (", name).replace(" )", ")")
    return [] if not name or name in DROP else [name]


def extract(wheels: dict[str, Path]) -> dict[str, list[str]]:
    """Every source's normalised names (source order, duplicates within a source dropped)."""
    out: dict[str, list[str]] = {}
    for src in SOURCES:
        raw = read_list(source_text(src, wheels), src.symbol)
        names = [n for r in raw for n in normalise(r, src.name)]
        out[src.name] = list(dict.fromkeys(names))
        print(f"{src.name}: {len(raw)} raw -> {len(out[src.name])} names")
    out["stuff"] = stuff_names()
    return out


def write_outputs(lists: dict[str, list[str]], out_dir: Path, wheels: dict[str, Path]) -> int:
    """Write the per-source files, ``concepts.txt`` and ``SOURCES.md``; return the merged count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, names in lists.items():
        (out_dir / f"{name}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    merged = sorted({n for names in lists.values() for n in names})
    (out_dir / "concepts.txt").write_text("\n".join(merged) + "\n", encoding="utf-8")
    (out_dir / "SOURCES.md").write_text(sources_md(lists, len(merged), wheels), encoding="utf-8")
    return len(merged)


def sources_md(lists: dict[str, list[str]], merged: int, wheels: dict[str, Path]) -> str:
    """Attribution file: one row per source with count, origin and licence."""
    rows = []
    for src in SOURCES:
        symbol = src.symbol if src.symbol.isupper() else f"{src.symbol}()"
        origin = (f"`{src.path}` `{src.symbol}` in the installed open_clip_torch "
                  f"{importlib.metadata.version('open_clip_torch')} wheel"
                  if src.wheel == "open_clip"
                  else f"`{src.path}` `{symbol}` in `{wheels[src.wheel].name}` (PyPI)")
        rows.append(f"| `{src.name}.txt` | {src.title} | {len(lists[src.name])} | {origin} "
                    f"| {src.licence} |")
    rows.append(f"| `stuff.txt` | stuff / background concepts | {len(lists['stuff'])} "
                "| written for this project (`scripts/build_vocabulary.py`) "
                "| Apache-2.0 (project) |")
    return HEADER.format(merged=merged) + "\n".join(rows) + "\n" + POLICY


HEADER = """# Default concept vocabulary: sources and credits

Generated by `scripts/build_vocabulary.py` (do not edit by hand; rerun the script). The names are
class lists of public datasets (facts), read with `ast` from the source text of the wheels below,
never imported. `concepts.txt` is the merged, normalised, de-duplicated list: **{merged} names**.
We thank the authors of every dataset and of MMDetection, MMSegmentation, MMPretrain and
OpenCLIP.

| file | source | names | where it came from | licence |
|---|---|---|---|---|
"""

POLICY = """
## Normalisation policy (names are shown to annotators, so they must read naturally)

- Unicode NFKC, underscores -> spaces, lower case, whitespace collapsed (CLIP's tokenizer
  lower-cases anyway): `aerosol_can` -> `aerosol can`, `Band_Aid` -> `band aid`.
- A parenthesised sense is **kept** as `name (sense)`: `bow_(weapon)` -> `bow (weapon)`,
  `bow_(decorative_ribbons)` -> `bow (decorative ribbons)`. Dropping it would merge different
  things under one name (bat the animal / bat the club); the annotator sees the sense.
- Mapillary `A - B (C)` -> `a (b, c)`:
  `Lane Marking - Arrow (Left)` -> `lane marking (arrow, left)`.
- SUN397 / Places205 `apse_indoor`, `apartment_building/outdoor` -> `apse (indoor)`,
  `apartment building (outdoor)`.
- COCO-Stuff `wall-brick` -> `brick wall`; the `-other`, `-stuff`, `-merged` suffixes are dropped.
- Objects365 alternatives split on `/` into separate names (`Cabinet/shelf` -> `cabinet`, `shelf`).
- A few names are fixed explicitly (`FIXES` in the script: typos such as `Moniter/TV`, run-ons such
  as `pottedplant`); `background`, `unlabeled`, `other`, `void`, `ego vehicle`, `car mount`
  are dropped.
- No singularisation: `glasses`, `pants`, `shelves` stay as the datasets name them.
- Per-source files drop duplicates within the source (ImageNet-1k's clean names repeat
  `missile` and `sunglasses`, hence 998).
"""


def main() -> None:
    """Parse the wheel paths, extract, write; print the merged count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmdet", type=Path, required=True, help="mmdet-3.3.0 wheel")
    parser.add_argument("--mmseg", type=Path, required=True, help="mmsegmentation-1.2.2 wheel")
    parser.add_argument("--mmpretrain", type=Path, required=True, help="mmpretrain-1.2.0 wheel")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args()
    wheels = {"mmdet": args.mmdet, "mmseg": args.mmseg, "mmpretrain": args.mmpretrain}
    count = write_outputs(extract(wheels), args.out, wheels)
    print(f"concepts.txt: {count} distinct names -> {args.out}")


if __name__ == "__main__":
    main()
