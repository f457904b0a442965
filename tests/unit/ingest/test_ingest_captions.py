"""The caption rule the trainer sees (shared with the worker) and caption-file decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loraforge.datasets.captions import MAX_CAPTION_CHARS, CaptionError, decode_caption, final_caption


@pytest.mark.parametrize(("raw", "trigger", "default", "expected"), [
    ("a photo of [trigger] on a beach", "sks", None, "a photo of sks on a beach"),
    ("[trigger], [TRIGGER] twice", "ohwx man", None, "ohwx man, ohwx man twice"),
    ("a photo of a dog", "sks", None, "sks, a photo of a dog"),
    ("SKS dog in the snow", "sks", None, "SKS dog in the snow"),
    ("asks a question", "sks", None, "sks, asks a question"),
    (None, "sks", None, "sks"),
    ("   ", "sks", "a photo", "sks, a photo"),
    (None, "sks", "a photo of [trigger]", "a photo of sks"),
    ("[trigger], a photo of [trigger] dog", None, None, "a photo of dog"),
    ("a photo\n\nof  a\tdog", None, None, "a photo of a dog"),
    (None, None, None, ""),
    (None, None, "a photo", "a photo"),
])
def test_final_caption_rule(raw: str | None, trigger: str | None, default: str | None, expected: str) -> None:
    assert final_caption(raw, trigger_word=trigger, default_caption=default) == expected


@given(caption=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=80),
       trigger=st.from_regex(r"\A[a-z]{2,8}( [a-z]{2,8})?\Z"))
def test_the_trigger_appears_exactly_as_given_and_is_never_doubled(caption: str, trigger: str) -> None:
    # Given any caption without a placeholder and a trigger word
    caption = caption.replace("[", "(")
    once = final_caption(caption, trigger_word=trigger, default_caption=None)
    # Then the trigger is in the result, and running the rule again changes nothing
    assert trigger.lower() in once.lower()
    assert final_caption(once, trigger_word=trigger, default_caption=None) == once


def test_caption_files_decode_as_utf8_with_bom_and_whitespace_collapsed() -> None:
    assert decode_caption("\ufeffune photo de [trigger]\r\n  à la plage\n".encode()) == "une photo de [trigger] à la plage"
    assert decode_caption(b"") == ""


@pytest.mark.parametrize(("data", "code"), [
    ("caf\xe9 au lait".encode("latin-1"), "CAPTION_NOT_UTF8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "CAPTION_NOT_UTF8"),
    (b"a caption with a \x00 byte", "CAPTION_CONTROL_CHARACTERS"),
    (("word " * 500).encode(), "CAPTION_TOO_LONG"),
    (b"x" * (4 * MAX_CAPTION_CHARS + 1), "CAPTION_TOO_LONG"),
])
def test_unusable_caption_files_have_a_reason(data: bytes, code: str) -> None:
    with pytest.raises(CaptionError) as refused:
        decode_caption(data)
    assert refused.value.code == code
