"""Question -> the object names to prompt the detector with. Rule-based, offline, microseconds.

A tagger or parser would need downloaded models; instead the extractor scans the question for
known object words (the lexicon: `vocabulary.OBJECT_NAMES`, the detector's own names and the
fallback keys), longest match first so multi-word names ("hot dog", "traffic light") beat their
last word. Plurals are undone by trying candidate singular forms against the lexicon. Words
outside the lexicon (adjectives, verbs, question words) are skipped, so "the red umbrella"
yields "umbrella". In a run of adjacent object words the last is the head noun ("pizza box" ->
"box", "orange cat" -> "cat"), unless a closed vocabulary lacks it. When nothing matches, the
result is empty: no region, no pruning.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from crop_localizer.vocabulary import FALLBACKS, IRREGULAR_SINGULARS, OBJECT_NAMES

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")

# Object words that are usually something else ("what can", "watch the", "is it orange") unless
# a determiner says they are a noun ("the can", "his watch", "an orange").
_AMBIGUOUS = frozenset({"can", "watch", "orange", "tie", "bat", "glass", "remote"})
_DETERMINERS = frozenset(
    {
        "a", "an", "the", "this", "that", "these", "those", "my", "your", "his", "her", "its",
        "our", "their", "'s", "some", "any", "each", "every", "another", "other", "both", "all",
        "no", "many", "several", "few", "one", "two", "three", "four", "five", "six", "seven",
        "eight", "nine", "ten",
    }
)  # fmt: skip
_POSSESSIVE = "'s"


def normalize_name(name: str) -> str:
    """Canonical spelling of a class name: lower case, single spaces, no underscores."""
    return " ".join(name.replace("_", " ").lower().split())


def _tokens(question: str) -> list[str]:
    """Lower-case word tokens; a possessive "'s" becomes its own token so it separates nouns."""
    text = question.lower().replace("\u2019", "'")
    tokens: list[str] = []
    for token in _TOKEN.findall(text):
        if token.endswith(_POSSESSIVE) and len(token) > 2:
            tokens += [token[:-2], _POSSESSIVE]
        else:
            tokens.append(token)
    return tokens


def _singular_candidates(word: str) -> list[str]:
    """The word itself, then plausible singulars, most specific rule first."""
    candidates = [word]
    if word in IRREGULAR_SINGULARS:
        candidates.append(IRREGULAR_SINGULARS[word])
    if word.endswith("ies") and len(word) > 4:
        candidates.append(word[:-3] + "y")
    if word.endswith("ves"):
        candidates += [word[:-3] + "fe", word[:-3] + "f"]
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        candidates.append(word[:-1])
    return candidates


class PhraseExtractor:
    """Maps questions onto detector class names.

    `vocabulary` is the detector's closed set of names (from a precomputed embedding file), or
    None for an open vocabulary (a live CLIP text encoder can embed any lexicon word). With a
    closed vocabulary a word the detector lacks is replaced by its first fallback it has
    ("woman" -> "person" for COCO names) or dropped.
    """

    def __init__(self, vocabulary: Collection[str] | None = None, *, max_phrases: int = 4):
        if max_phrases < 1:
            raise ValueError(f"max_phrases must be >= 1, got {max_phrases}")
        self._vocabulary = (
            None if vocabulary is None else frozenset(normalize_name(n) for n in vocabulary)
        )
        self._lexicon = frozenset(OBJECT_NAMES) | frozenset(FALLBACKS) | (self._vocabulary or set())
        self._longest = max(len(name.split()) for name in self._lexicon)
        self.max_phrases = max_phrases

    def extract(self, question: str) -> list[str]:
        """Detector class names for the objects the question mentions, in order, deduplicated."""
        tokens = self._split_unknown_compounds(_tokens(question))
        runs: list[list[str]] = []  # adjacent object words ("pizza box") form one run
        previous_end = -1
        i = 0
        while i < len(tokens):
            match = self._match_at(tokens, i)
            if match is None:
                i += 1
                continue
            term, length = match
            if previous_end == i and runs:
                runs[-1].append(term)
            else:
                runs.append([term])
            i += length
            previous_end = i

        names: list[str] = []
        for run in runs:
            # The last word of a run is its head noun; a closed vocabulary lacking it may still
            # know a modifier ("pizza box" -> "pizza").
            name = next(filter(None, map(self._to_vocabulary, reversed(run))), None)
            if name is not None and name not in names:
                names.append(name)
        return names[: self.max_phrases]

    def _match_at(self, tokens: list[str], start: int) -> tuple[str, int] | None:
        """The longest lexicon term starting at `start`, singularising its last word."""
        for length in range(min(self._longest, len(tokens) - start), 0, -1):
            words = tokens[start : start + length]
            for last in _singular_candidates(words[-1]):
                term = " ".join([*words[:-1], last])
                if term in self._lexicon and self._reads_as_noun(tokens, start, term):
                    return term, length
        return None

    def _split_unknown_compounds(self, tokens: list[str]) -> list[str]:
        """Keep hyphenated lexicon words ("t-shirt") whole; split others ("red-haired")."""
        kept: list[str] = []
        for token in tokens:
            known = any(c in self._lexicon for c in _singular_candidates(token))
            kept += [token] if known or "-" not in token else token.split("-")
        return kept

    def _reads_as_noun(self, tokens: list[str], start: int, term: str) -> bool:
        """Ambiguous words count only right after a determiner, or after one plus an adjective."""
        if term not in _AMBIGUOUS:
            return True
        before = tokens[max(0, start - 2) : start]
        if before and before[-1] in _DETERMINERS:
            return True
        return (
            len(before) == 2
            and before[0] in _DETERMINERS
            and before[1] not in self._lexicon
            and before[1] not in _DETERMINERS
        )

    def _to_vocabulary(self, term: str) -> str | None:
        if self._vocabulary is None:
            return term
        for candidate in (term, *FALLBACKS.get(term, ())):
            if candidate in self._vocabulary:
                return candidate
        return None
