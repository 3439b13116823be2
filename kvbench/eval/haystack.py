"""Haystacks for RULER-style tasks: neutral noise, prose from the local corpus, word lists, and where
needles go (RULER, Hsieh et al. 2024; EVALUATION.md). Everything is offline and deterministic."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Simple English words for needle keys and word values (kvbench's own list).
WORDS = tuple("""
apple river silver garden window candle forest rabbit mountain pepper violin island
bottle copper dragon eagle feather glacier hammer jacket kettle lantern marble needle
orange pillow quartz saddle tiger umbrella valley walnut yellow zebra anchor basket
cactus dolphin engine falcon guitar harbor igloo jungle kitten ladder magnet nickel
oyster parrot quiver rocket shadow tunnel velvet wagon bronze cherry desert ember
fossil ginger helmet iris jigsaw koala lemon mango nectar olive panda quilt raven
sparrow thunder tulip vessel willow yacht blanket canyon donkey falcon granite hollow
ivory jasmine kayak lobster meadow nutmeg orchid pebble raisin salmon turnip violet
whistle beacon cobalt dune fjord grove hazel indigo juniper kiwi lilac maple nova
onyx pine quail reef spruce topaz urchin vortex wren amber birch clover daisy elm
fern gull heron ibis jade kelp lotus moss nettle oak plum reed sage thyme wasp
""".split())


@functools.lru_cache(maxsize=1)
def prose_words() -> tuple[str, ...]:
    from kvbench.corpus import load_texts

    return tuple(" ".join(load_texts("pydoc", split="eval")).split())


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Distinct lowercase words of the prose corpus plus WORDS (word lists for cwe)."""
    words = set(WORDS)
    words.update(w for w in prose_words() if re.fullmatch(r"[a-z]{4,10}", w))
    return tuple(sorted(words))


def haystack(kind: str, n: int, start: int) -> list[str]:
    """``n`` haystack units: noise paragraphs, or words of prose starting at a sentence near ``start``."""
    if kind == "noise":
        return [NOISE] * n
    words = prose_words()
    start %= len(words)
    while not words[start - 1].endswith((".", "!", "?")):  # begin at a sentence start
        start = (start + 1) % len(words)
    return [words[(start + i) % len(words)] for i in range(n)]


def insert(units: list[str], needles: Sequence[str], depths: Sequence[float]) -> str:
    """Put each needle between haystack units at its depth (0 = start, 1 = end), moved forward to the
    next sentence end when the units are words of prose."""
    units = list(units)
    placed = sorted(zip(depths, range(len(needles))), reverse=True)
    for depth, i in placed:  # from the deepest, so earlier positions stay valid
        pos = round(depth * len(units))
        end = pos
        while 0 < end < len(units) and not units[end - 1].endswith((".", "!", "?")):
            end += 1
        units.insert(end if end <= len(units) else pos, needles[i])
    return " ".join(units)


def spread(index: int, count: int) -> float:
    """Depth of sample ``index`` out of ``count``: evenly from 0 to 1."""
    return 0.5 if count <= 1 else index / (count - 1)
