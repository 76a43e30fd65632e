"""TAG's caption -> candidate-word extraction (CaSED rules), offline.

Steps (TAG's ``default_vocab_transform``, vendored from CaSED): clean the joined captions (tags,
URLs, file extensions, special characters, ``_``/``-`` to spaces, words shorter than 3 letters,
non-letters), lowercase, singularise with ``inflect`` (except words ending in ss/us/is/ies/oes),
drop TAG's banned words, keep words seen at least ``min_count`` times (falling back to the highest
count), keep nouns/adjectives/-ing/-ed forms, de-duplicate; an empty result becomes ``["object"]``.

The part-of-speech filter replaces TAG's flair tagger (a network download) by the lexicon that
ships inside the ``lemminflect`` wheel: a word is kept when the lexicon lists it as a noun,
proper noun or adjective, or as a verb in -ing/-ed form (TAG kept VBG/VBN); words the lexicon
does not know are kept (rare nouns are the usual case), stop words never are.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Iterable

BANNED = frozenset({
    "image", "photo", "picture", "thumbnail", "logo", "symbol", "clipart", "portrait", "painting",
    "illustration", "icon", "profile", "object",
})
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are aren as at be because been before
being below between both but by can cannot could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it its
itself just let me more most my myself no nor not now of off on once only or other ought our ours
ourselves out over own same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves one two three four
five six seven eight nine ten many much lot lots very really stock free high resolution new best
top view close closeup background front side left right next near inside outside onto upon
""".split())
_TAG_RE = re.compile(r"<[^>]*>")
_URL_RE = re.compile(r"(https?://\S+|www\.\S+)")
_EXT_RE = re.compile(r"\b\w+\.(jpe?g|png|gif|bmp|tiff?|webp|svg|eps|pdf)\b", re.IGNORECASE)
_NON_LETTER_RE = re.compile(r"[^a-z\s]")
_KEEP_PLURAL_ENDINGS = ("ss", "us", "is", "ies", "oes")


@functools.lru_cache(maxsize=1)
def _inflect():
    import inflect

    return inflect.engine()


@functools.lru_cache(maxsize=65536)
def singularise(word: str) -> str:
    if word.endswith(_KEEP_PLURAL_ENDINGS):
        return word
    single = _inflect().singular_noun(word)
    return single if isinstance(single, str) and single else word


@functools.lru_cache(maxsize=65536)
def is_content_word(word: str) -> bool:
    """Noun / adjective / -ing / -ed per the lemminflect lexicon (unknown words are kept)."""
    if word in STOP_WORDS:
        return False
    from lemminflect import getAllLemmas

    pos = getAllLemmas(word)
    if not pos:
        return True
    if {"NOUN", "PROPN", "ADJ"} & set(pos):
        return True
    return "VERB" in pos and word.endswith(("ing", "ed"))


def clean_text(text: str) -> list[str]:
    """Lowercased words of a caption after TAG's removal rules (before singularising)."""
    text = _URL_RE.sub(" ", _TAG_RE.sub(" ", text))
    text = _EXT_RE.sub(" ", text).replace("_", " ").replace("-", " ").lower()
    text = _NON_LETTER_RE.sub(" ", text)
    return [w for w in text.split() if len(w) >= 3]


def extract_words(captions: Iterable[str], *, min_count: int = 2, pos_filter: bool = True) -> list[str]:
    """Candidate names from the retrieved captions of one segment, most frequent first."""
    counts: Counter[str] = Counter()
    for caption in captions:
        for word in clean_text(caption):
            word = singularise(word)
            if word not in BANNED and word not in STOP_WORDS:
                counts[word] += 1
    if not counts:
        return ["object"]
    threshold = min(min_count, max(counts.values()))
    words = [w for w, c in counts.most_common() if c >= threshold]
    if pos_filter:
        words = [w for w in words if is_content_word(w)]
    return words or ["object"]
