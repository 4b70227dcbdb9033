"""The sentence-end model that checks a pause's words (`actors.llm.sentence_end`), with the packaged
Gemma 3 270M: the transcripts of Debian's LibriVox sentences, cut where their clause cannot end and
where it does, and everyday requests."""

from __future__ import annotations

import pytest

from actors.audio.end_of_turn import WORDS_OPEN_BELOW
from actors.llm.sentence_end import GemmaSentenceEnd

pytestmark = pytest.mark.slow

UNFINISHED = [
    "and mister john dashwood had then leisure to",
    "he was",
    "unless to be rather cold hearted and",
    "had he married a more amiable woman he might have been",
    "he might even have",
    "i would like to book a table for",
    "can you remind me to call my",
    "what is the",
]
FINISHED = [
    "and mister john dashwood had then leisure to consider how much there might be prudently in his power"
    " to do for them",
    "he was not an ill disposed young man",
    "he might even have been made amiable himself",
    "what is the weather like today",
    "tell me a joke",
    "who did you go with",  # a stranded preposition ends a question
]


# (the agent's question, a whole answer, an answer cut where it cannot end)
ANSWERS = [
    ("What can I get you today?", "a large coffee", "i would like a"),
    ("Who is the appointment for?", "my daughter", "it is for my"),
    ("Which one would you like?", "the second option", "i think the"),
]


@pytest.fixture(scope="module")
def model() -> GemmaSentenceEnd:
    return GemmaSentenceEnd()


def test_words_no_sentence_ends_on_score_below_the_threshold_and_sentences_above(
    model: GemmaSentenceEnd,
) -> None:
    unfinished = {words: model.probability_sentence_ends(words) for words in UNFINISHED}
    finished = {words: model.probability_sentence_ends(words) for words in FINISHED}
    assert all(p < WORDS_OPEN_BELOW for p in unfinished.values()), unfinished
    assert all(p >= WORDS_OPEN_BELOW for p in finished.values()), finished


def test_the_answer_does_not_depend_on_earlier_calls_or_on_the_transcripts_punctuation(
    model: GemmaSentenceEnd,
) -> None:
    # Calls reuse the cached words they share with the previous call: the answer must not change.
    first = model.probability_sentence_ends("he might even have been made amiable himself")
    model.probability_sentence_ends("he might even have")
    model.probability_sentence_ends("tell me a joke")
    again = model.probability_sentence_ends("he might even have been made amiable himself")
    assert again == pytest.approx(first, rel=1e-4)
    punctuated = model.probability_sentence_ends("He might even have been made amiable himself.")
    assert punctuated >= WORDS_OPEN_BELOW
    assert model.probability_sentence_ends("  ...  ") == 0.0


def test_a_short_answer_can_end_after_the_agents_question_and_a_cut_one_still_cannot(
    model: GemmaSentenceEnd,
) -> None:
    for question, answer, cut in ANSWERS:
        assert model.probability_sentence_ends(answer, question) >= WORDS_OPEN_BELOW, (question, answer)
        assert model.probability_sentence_ends(cut, question) < WORDS_OPEN_BELOW, (question, cut)
    # Without the question, "a large coffee" reads as a fragment: the turn would wait.
    assert model.probability_sentence_ends("a large coffee") < WORDS_OPEN_BELOW
