"""What an annotator sees of a prediction, to tell whether a recomputed one differs.

``prelabel --refresh`` recomputes the tasks whose prediction later knowledge *can* change
(:func:`database_tools.prediction_log.stale_tasks` knows concept ids, not region embeddings), and
pushes only those whose prediction *did* change: the same regions with the same names are not
sent to Label Studio again as one more copy of the same prediction.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping

#: The item keys that make up what is shown. Left out: the region id (random per prediction),
#: the score (it moves with the evidence behind an unchanged name, docs/learning.md "One score
#: scale") and whatever bookkeeping Label Studio adds to a stored item.
_SHOWN = ("from_name", "to_name", "type", "value")


def shown_regions(result: Iterable[Mapping]) -> tuple[tuple[str, ...], ...]:
    """The regions of a Label Studio ``result`` list as a comparable value.

    A region is the items sharing one id (a shape and its name); each item is reduced to its
    control, type and value (mask RLE, polygon points or box, label, name). Equal values mean
    the same regions with the same names, in whatever order and under whatever region ids.
    """
    regions: dict[str, list[str]] = defaultdict(list)
    for item in result:
        shown = {key: item.get(key) for key in _SHOWN}
        regions[str(item.get("id"))].append(json.dumps(shown, sort_keys=True, default=str))
    return tuple(sorted(tuple(sorted(items)) for items in regions.values()))


def same_regions(a: Iterable[Mapping], b: Iterable[Mapping]) -> bool:
    """Whether two results show the same regions with the same names."""
    return shown_regions(a) == shown_regions(b)
