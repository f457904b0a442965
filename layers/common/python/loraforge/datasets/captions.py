"""Captions: decoding a `.txt` next to an image, and THE rule for the caption a trainer sees.

Pure stdlib (the worker image imports this module for its caption step).

The rule (`final_caption`), in order:
1. The image's own caption (from `<name>.txt`) if it has text; otherwise the default caption; otherwise "".
2. With a trigger word: every `[trigger]` placeholder becomes the trigger word. A caption that has no
   placeholder and does not already contain the trigger word (whole word, any case) gets it prepended
   as `"<trigger>, <caption>"`; an empty caption becomes just the trigger word.
3. Without a trigger word: `[trigger]` placeholders are removed and the commas/spaces around them tidied.
Whitespace (newlines included) collapses to single spaces. A caption that already went through the rule
keeps its trigger once: the rule never prepends the trigger to a caption that has it as a word.
"""

from __future__ import annotations

import re

PLACEHOLDER = "[trigger]"
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_CHARS = 2000
"""Long enough for the detailed natural-language captions FLUX/Qwen users write (T5 reads ~512 tokens)."""
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS
"""A caption file larger than this is refused without reading it (UTF-8 is at most 4 bytes a character)."""

_PLACEHOLDER_RE = re.compile(re.escape(PLACEHOLDER), re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_DISALLOWED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class CaptionError(ValueError):
    """A caption file that cannot be used. `code`: CAPTION_NOT_UTF8 | CAPTION_TOO_LONG | CAPTION_CONTROL_CHARACTERS."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _tidy(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def decode_caption(data: bytes, *, max_chars: int = MAX_CAPTION_CHARS) -> str:
    """Bytes of a caption file → its text (BOM dropped, whitespace collapsed). "" means "no caption".

    Raises CaptionError when the file is not UTF-8, holds control characters (a binary file named .txt)
    or is longer than `max_chars` characters.
    """
    if len(data) > 4 * max_chars:
        raise CaptionError("CAPTION_TOO_LONG", f"the caption file is {len(data)} bytes; captions are limited to {max_chars} characters")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaptionError("CAPTION_NOT_UTF8", f"the caption is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    if _DISALLOWED.search(text):
        raise CaptionError("CAPTION_CONTROL_CHARACTERS", "the caption holds control characters; it does not look like text")
    text = _tidy(text)
    if len(text) > max_chars:
        raise CaptionError("CAPTION_TOO_LONG", f"the caption has {len(text)} characters; the limit is {max_chars}")
    return text


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _remove_placeholder(text: str) -> str:
    text = _PLACEHOLDER_RE.sub(" ", text)
    text = re.sub(r"\s+([,;.])", r"\1", text)  # "a [trigger], b" -> "a , b" -> "a, b"
    text = re.sub(r"([,;])(\s*[,;])+", r"\1", text)  # doubled separators left behind
    return _tidy(text).strip(" ,;")


def final_caption(raw: str | None, *, trigger_word: str | None, default_caption: str | None) -> str:
    """The caption a trainer sees for one image (the rule is in the module docstring)."""
    text = _tidy(raw or "") or _tidy(default_caption or "")
    trigger = _tidy(trigger_word or "")
    if not trigger:
        return _remove_placeholder(text)
    if _PLACEHOLDER_RE.search(text):
        return _tidy(_PLACEHOLDER_RE.sub(lambda _: trigger, text))
    if not text:
        return trigger
    if _contains_word(text, trigger):
        return text
    return f"{trigger}, {text}"
