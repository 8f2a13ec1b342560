"""The classify plugin's bundled concept bank (plugins/analyzer_classify/concepts.txt) and the
maintainer script that builds it (scripts/build_concepts.py) from embedded COCO and Open Images
names and Debian's wordnet-base."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer_classify.concepts import CONCEPTS_FILE, concept_bank

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build_concepts.py"
WORDNET = Path("/usr/share/wordnet")
# CI sets REQUIRE_SYSTEM_DEPS=1 (.ci/run) so that a missing system package fails instead of skipping.
# Not ANALYZER_-prefixed: the analyzer reads every ANALYZER_* variable as a setting and rejects
# unknown ones, and conftest's `isolated` fixture removes them before each test.
REQUIRE_SYSTEM_DEPS = os.environ.get("REQUIRE_SYSTEM_DEPS", "") not in ("", "0")

COCO_2017 = """person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant,
stop sign, parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack,
umbrella, handbag, tie, suitcase, frisbee, skis, snowboard, sports ball, kite, baseball bat, baseball glove,
skateboard, surfboard, tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich,
orange, broccoli, carrot, hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, tv,
laptop, mouse, remote, keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, book, clock, vase,
scissors, teddy bear, hair drier, toothbrush"""


def test_the_bank_loads_once_without_header_or_blank_lines():
    bank = concept_bank()
    assert bank is concept_bank()
    assert CONCEPTS_FILE.read_text(encoding="utf-8").startswith("# ")
    assert bank
    assert all(concept and concept == concept.strip() and not concept.startswith("#") for concept in bank)


def test_concepts_are_lower_case_sorted_and_given_once():
    bank = concept_bank()
    assert all(concept == concept.lower() for concept in bank)
    assert bank == sorted(set(bank))


def test_the_bank_is_broad_but_not_huge():
    assert 2000 <= len(concept_bank()) <= 4000


def test_all_80_coco_classes_are_in_the_bank():
    coco = [name.strip() for name in COCO_2017.replace("\n", " ").split(",")]
    assert len(set(coco)) == 80
    assert set(coco) <= set(concept_bank())


def test_open_images_and_common_concrete_wordnet_nouns_are_in_the_bank():
    bank = set(concept_bank())
    # Open Images classes that COCO does not have
    assert {"human face", "lighthouse", "hamburger", "sunflower", "wheelchair"} <= bank
    # WordNet: animals, artifacts, food, natural objects, plants, people, weather, places
    assert {"dog", "bridge", "apple", "tree", "mountain", "river", "beach", "house", "bread", "grass"} <= bank
    assert {"child", "soldier", "teacher", "rain", "snow", "smoke", "city", "forest", "fire", "school"} <= bank


def test_abstract_offensive_and_proper_nouns_are_not():
    bank = set(concept_bank())
    assert not {"happiness", "idea", "love", "time", "freedom", "thing", "way", "action", "place"} & bank
    assert not {"bitch", "whore", "pussy", "ass", "tit", "faggot", "nigger"} & bank
    assert not {"sunday", "paris", "jesus"} & bank  # capitalised in WordNet: proper nouns
    assert all(len(concept.split()) <= 3 for concept in bank)


def test_the_file_carries_its_sources_and_wordnets_licence():
    header = [line for line in CONCEPTS_FILE.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert "COCO" in text and "Open Images" in text and "CC BY 4.0" in text
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in text
    assert (REPO / "plugins" / "analyzer_classify" / "CONCEPTS.md").is_file()


def test_rebuilding_gives_exactly_the_checked_in_file(tmp_path):
    """The bank cannot drift from its script: run scripts/build_concepts.py and compare bytes."""
    if not (WORDNET / "data.noun").is_file():
        message = f"WordNet is not installed ({WORDNET}): apt-get install wordnet-base"
        if REQUIRE_SYSTEM_DEPS:
            pytest.fail(f"{message} (REQUIRE_SYSTEM_DEPS is set)")
        pytest.skip(f"{message}; set REQUIRE_SYSTEM_DEPS=1 to fail instead")
    output = tmp_path / "concepts.txt"
    done = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--wordnet", str(WORDNET), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for source in ("COCO 2017: 80 concepts", "Open Images V7: ", "WordNet 3.0: "):
        assert source in done.stdout
    assert output.read_bytes() == CONCEPTS_FILE.read_bytes(), (
        "concepts.txt differs from what scripts/build_concepts.py builds: run it and commit the result"
    )
