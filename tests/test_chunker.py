"""Phrase chunking: earliest safe release, never inside abbreviations or numbers."""

from __future__ import annotations

import pytest

from actors.conversation.chunker import ChunkerConfig, PhraseChunker


def chunk(tokens: list[str], config: ChunkerConfig | None = None) -> list[tuple[int, str]]:
    """(index of the token that released it, phrase) pairs; index len(tokens) = flush."""
    chunker = PhraseChunker(config)
    out = [(i, p) for i, t in enumerate(tokens) for p in chunker.push(t)]
    rest = chunker.flush()
    return out + ([(len(tokens), rest)] if rest else [])


def test_sentence_released_on_its_final_token_without_waiting() -> None:
    tokens = ["Hello", " there", ".", " How", " are", " you", "?"]
    assert chunk(tokens) == [(2, "Hello there."), (6, "How are you?")]


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["I", " met", " Dr", ".", " Smith", " today", "."], ["I met Dr. Smith today."]),
        (["It", " costs", " 3", ".", "5", " dollars", "."], ["It costs 3.5 dollars."]),
        (["The", " U", ".S", ".", " is", " big", "."], ["The U.S. is big."]),
        (["We", " had", " 1", ",", "000", " guests", "."], ["We had 1,000 guests."]),
    ],
)
def test_abbreviations_and_numbers_are_not_cut(tokens: list[str], expected: list[str]) -> None:
    assert [p for _, p in chunk(tokens)] == expected


def test_first_clause_released_early_then_longer_phrases() -> None:
    tokens = [
        "Well",
        ",",
        "I",
        "think",
        "that",
        ",",
        "honestly",
        ",",
        "the",
        "answer",
        "is",
        "forty",
        "two",
        ",",
        "my",
        "friend",
        ".",
    ]
    tokens = [t if t in ",." else " " + t for t in tokens]
    phrases = [p for _, p in chunk(tokens)]
    assert phrases[0] == "Well , I think that ,".replace(" ,", ",")
    assert phrases[1].endswith("my friend.")


def test_token_with_inner_boundary_and_flush() -> None:
    assert [p for _, p in chunk(["Yes. No", " way"])] == ["Yes.", "No way"]


def test_long_text_without_punctuation_is_cut_at_a_space() -> None:
    words = [" word"] * 100
    phrases = [p for _, p in chunk(words, ChunkerConfig(max_phrase_chars=60))]
    assert all(len(p) <= 60 for p in phrases)
    assert " ".join(phrases).split() == ["word"] * 100
