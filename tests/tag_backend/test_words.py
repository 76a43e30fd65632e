"""TAG's caption -> word extraction."""
from __future__ import annotations

from tag_backend.text.words import clean_text, extract_words, is_content_word, singularise


def test_cleaning_rules():
    words = clean_text("A <PERSON> photo_of two dogs-running at http://x.org/a.jpg img_001.jpeg 42 ok")
    assert "person" not in words and "http" not in words and "jpg" not in words
    assert {"photo", "two", "dogs", "running"} <= set(words)
    assert "ok" not in words  # shorter than 3 letters


def test_singularise_except_protected_endings():
    assert singularise("dogs") == "dog"
    assert singularise("glass") == "glass" and singularise("bus") == "bus"


def test_min_count_banned_words_and_pos():
    caps = ["two dogs on the grass", "a dog sleeping on grass", "photo of a happy dog", "quickly"]
    words = extract_words(caps, min_count=2)
    assert words[0] == "dog" and "grass" in words
    assert "photo" not in words and "quickly" not in words and "happy" not in words  # count 1


def test_threshold_falls_back_to_highest_count_and_empty_is_object():
    assert extract_words(["a red bicycle"], min_count=2) == ["red", "bicycle"] or \
        set(extract_words(["a red bicycle"], min_count=2)) == {"red", "bicycle"}
    assert extract_words(["the of and"], min_count=2) == ["object"]
    assert extract_words([], min_count=2) == ["object"]


def test_pos_filter_keeps_nouns_adjectives_and_participles_only():
    assert is_content_word("dog") and is_content_word("wooden") and is_content_word("running")
    assert not is_content_word("quickly") and not is_content_word("the")
    assert is_content_word("zyxwvut")  # unknown words are kept
