"""What the engine learnt from corrections: visual exemplars and repeated aliases.

At predict time a segment whose embedding has cosine >= ``threshold`` with a served exemplar
takes that exemplar's concept (:class:`database_tools.exemplar_index.ExemplarIndex`: bounded,
diversity-selected, followed incrementally from the store); otherwise a name annotators keep
correcting is replaced by the name they want (:class:`AliasMap`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from database_tools.exemplar_index import ExemplarIndex, ExemplarMatch

__all__ = ["AliasMap", "AliasTarget", "ExemplarIndex", "ExemplarMatch", "empty_exemplars"]


def empty_exemplars() -> ExemplarIndex:
    """An exemplar memory with nothing learnt (a pipeline built without a store)."""
    return ExemplarIndex("")


@dataclass(frozen=True)
class AliasTarget:
    """The concept annotators want instead of a predicted name."""

    text: str
    entry_id: int | None = None


@dataclass
class AliasMap:
    """Names annotators keep correcting: predicted name -> the concept they want instead.

    ``mapping`` is keyed by the concept database's normalised text; ``normalize`` is that
    normalisation. Only aliases corrected at least ``TAG_ALIAS_MIN_COUNT`` times are loaded, so one
    odd correction does not rename every future region.
    """

    mapping: dict[str, AliasTarget | str] = field(default_factory=dict)
    normalize: object = staticmethod(lambda s: s.strip().casefold())

    def lookup(self, name: str) -> AliasTarget | None:
        target = self.mapping.get(self.normalize(name))
        if isinstance(target, str):
            target = AliasTarget(target)
        return target if target and target.text != name else None
