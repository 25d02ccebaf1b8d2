"""Markdown to HTML for user content. Raw HTML in the source is escaped, never passed through,
and markdown-it refuses javascript:/vbscript:/data: links, so the output is safe to insert."""

from functools import lru_cache

from markdown_it import MarkdownIt


@lru_cache(maxsize=1)
def _md() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": False}).enable(["table", "strikethrough"])


def markdown_html(text: str) -> str:
    return _md().render(text)
