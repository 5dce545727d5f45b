"""Question -> detector class names, on real question forms (VQAv2, GQA, TextVQA style)."""

from __future__ import annotations

import pytest

from crop_localizer.phrases import PhraseExtractor
from crop_localizer.vocabulary import COCO_NAMES

OPEN = PhraseExtractor()  # open vocabulary, as with a live CLIP text encoder
COCO = PhraseExtractor(COCO_NAMES)  # closed vocabulary of an official checkpoint

QUESTIONS = [
    # (question, open vocabulary, COCO vocabulary)
    ("What is written on the sign?", ["sign"], []),
    ("How many dogs are there?", ["dog"], ["dog"]),
    ("What color is the umbrella the woman holds?", ["umbrella", "woman"], ["umbrella", "person"]),
    ("What is the man holding?", ["man"], ["person"]),
    ("How many people are in the picture?", ["person"], ["person"]),
    ("Is there a hot dog on the plate?", ["hot dog", "plate"], ["hot dog"]),
    ("What is the traffic light showing?", ["traffic light"], ["traffic light"]),
    ("Are there any knives or forks on the table?", ["knife", "fork", "table"],
     ["knife", "fork", "dining table"]),
    ("How many giraffes are standing near the fence?", ["giraffe", "fence"], ["giraffe"]),
    ("What are the children playing with?", ["child"], ["person"]),
    ("How many buses are parked?", ["bus"], ["bus"]),
    ("Which side of the photo is the white car on?", ["car"], ["car"]),
    ("Is the man to the left or to the right of the bus?", ["man", "bus"], ["person", "bus"]),
    ("What color are the man's shoes?", ["man", "shoe"], ["person"]),
    ("What number is on the player's jersey?", ["player", "jersey"], ["person"]),
    ("What is the title of the book on the shelf?", ["book", "shelf"], ["book"]),
    ("What brand is the red-haired woman's phone?", ["woman", "phone"], ["person", "cell phone"]),
    ("Is the person wearing a t-shirt?", ["person", "t-shirt"], ["person"]),
    ("What color is the orange cat?", ["cat"], ["cat"]),
    ("What is on the pizza box?", ["box"], ["pizza"]),
    ("Is the can open?", ["can"], []),
    ("What does the watch say?", ["watch"], []),
    ("Is the shirt orange?", ["shirt"], []),
    ("Are the teddy bears on the bed?", ["teddy bear", "bed"], ["teddy bear", "bed"]),
    ("What sport is being played?", [], []),
    ("What time is it?", [], []),
    ("What can you see?", [], []),
    ("Is it sunny?", [], []),
    ("", [], []),
]  # fmt: skip


@pytest.mark.parametrize(("question", "open_names", "coco_names"), QUESTIONS)
def test_question_forms_map_to_object_names(question, open_names, coco_names):
    assert OPEN.extract(question) == open_names
    assert COCO.extract(question) == coco_names


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("dogs", "dog"),
        ("buses", "bus"),
        ("boxes", "box"),
        ("strawberries", "strawberry"),
        ("knives", "knife"),
        ("leaves", "leaf"),
        ("women", "woman"),
        ("geese", "goose"),
        ("skis", "skis"),  # a COCO name that is itself plural stays as it is
        ("glasses", "glasses"),
        ("hot dogs", "hot dog"),
    ],
)
def test_plurals_are_singularised_against_the_lexicon(plural, singular):
    assert OPEN.extract(f"How many {plural} are there?") == [singular]


def test_closed_vocabulary_uses_its_own_multi_word_names():
    extractor = PhraseExtractor(["Television_Set", "person"])
    assert extractor.extract("Is the television set on?") == ["television set"]


def test_word_outside_a_closed_vocabulary_without_fallback_is_dropped():
    assert PhraseExtractor(["dog"]).extract("Is the cat near the dog?") == ["dog"]


def test_names_are_deduplicated_in_order_of_first_mention():
    assert OPEN.extract("Is the dog bigger than the cat or the other dogs?") == ["dog", "cat"]


def test_at_most_max_phrases_names_are_returned():
    extractor = PhraseExtractor(max_phrases=2)
    assert extractor.extract("Are the dog, the cat and the horse asleep?") == ["dog", "cat"]


def test_max_phrases_must_be_positive():
    with pytest.raises(ValueError, match="max_phrases"):
        PhraseExtractor(max_phrases=0)
