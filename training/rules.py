"""Simulated-annotator rules: hidden preferences the loop is asked to learn (``simulate_loop``).

A rule is any callable ``(prompt_messages, text_a, text_b) -> "a" | "b" | "tie"``: the prompt's
chat messages (``[{"role", "content"}, ...]``) and the two responses as shown. Built in:

- ``concise``: the shorter response (in characters, surrounding whitespace ignored) wins; lengths
  within 5% of the longer one are a tie.
- ``plain``: not about length: the response with fewer markdown structure lines (list items
  ``-``/``*``/``+``/``1.``/``1)`` and headings ``#``) wins; as many is a tie. A policy learns it by
  answering in prose rather than bullet lists.

``rule_from_spec`` resolves a built-in name or ``package.module:function``, so anyone can bring a
rule of their own. Torch-free and Django-free.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

CHOICES = ("a", "b", "tie")
Rule = Callable[[list[dict], str, str], str]

CONCISE_TIE_FRACTION = 0.05  # |len_a - len_b| <= 5% of the longer one: a tie
_STRUCTURE_LINE = re.compile(r"^\s*(?:[-*+]\s+|\d+[.)]\s+|#{1,6}\s)")


def concise(prompt_messages: list[dict], text_a: str, text_b: str) -> str:
    """The shorter response wins; near-equal lengths (within 5% of the longer) tie."""
    la, lb = len(text_a.strip()), len(text_b.strip())
    if abs(la - lb) <= CONCISE_TIE_FRACTION * max(la, lb):
        return "tie"
    return "a" if la < lb else "b"


def structure_lines(text: str) -> int:
    """Lines that are markdown list items or headings."""
    return sum(1 for line in text.splitlines() if _STRUCTURE_LINE.match(line))


def plain(prompt_messages: list[dict], text_a: str, text_b: str) -> str:
    """The response with fewer markdown list / heading lines wins; as many is a tie."""
    na, nb = structure_lines(text_a), structure_lines(text_b)
    if na == nb:
        return "tie"
    return "a" if na < nb else "b"


RULES: dict[str, Rule] = {"concise": concise, "plain": plain}


def rule_from_spec(spec: str) -> Rule:
    """A built-in rule by name, or ``package.module:function`` imported; ValueError saying why
    when the name is unknown, the module cannot be imported, or the attribute is missing or not
    callable."""
    spec = (spec or "").strip()
    if spec in RULES:
        return RULES[spec]
    if ":" not in spec:
        raise ValueError(f"unknown rule {spec!r}; built in: {', '.join(RULES)}; or give package.module:function")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"rule {spec!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not found, or the module itself fails to import: say which and why
        raise ValueError(f"rule {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"rule {spec!r}: {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"rule {spec!r}: {attr!r} is not callable")
    return obj


def judge(rule: Rule, prompt_messages: list[dict], text_a: str, text_b: str) -> str:
    """``rule``'s answer, checked: anything but "a", "b" or "tie" is a ValueError naming it."""
    choice = rule(prompt_messages, text_a, text_b)
    if choice not in CHOICES:
        name = getattr(rule, "__qualname__", repr(rule))
        raise ValueError(f"rule {name} returned {choice!r}; a rule returns one of {', '.join(CHOICES)}")
    return choice
