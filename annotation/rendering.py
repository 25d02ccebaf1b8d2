"""Markdown to HTML for user content. Raw HTML in the source is escaped, never passed through,
and markdown-it refuses javascript:/vbscript:/data: links, so the output is safe to insert."""

from functools import lru_cache

from markdown_it import MarkdownIt


@lru_cache(maxsize=1)
def _md() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": False}).enable(["table", "strikethrough"])


# Rendering is a pure function of the text and costs more than a hand-out's SQL (a lease shows a
# prompt, two responses and the guideline; each comparison is shown to several annotators, a
# prompt and the guideline to many): the latest texts up to _CACHED_CHARS are kept rendered, per
# process (at most _CACHED texts: a few MB at most, with their HTML).
_CACHED, _CACHED_CHARS = 512, 16_000


def markdown_html(text: str) -> str:
    return _cached_html(text) if len(text) <= _CACHED_CHARS else _md().render(text)


@lru_cache(maxsize=_CACHED)
def _cached_html(text: str) -> str:
    return _md().render(text)
