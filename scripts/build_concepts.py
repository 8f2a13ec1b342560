#!/usr/bin/env python3
"""Build the classify plugin's bundled concept bank: plugins/analyzer_classify/concepts.txt.

The bank is what ``classify`` matches images against when the user gives no labels, so it has to
work offline and cover what photos show. Three sources, each a list of plain English nouns:

- COCO 2017's 80 object categories (embedded below; COCO annotations are CC BY 4.0);
- a selection of Open Images V7's 600 boxable classes: the concrete ones, without grouping classes
  such as "Land vehicle" or "Kitchen & dining room table" (embedded below; CC BY 4.0);
- common concrete WordNet 3.0 nouns, read from Debian's ``wordnet-base`` package
  (``apt-get install wordnet-base``: /usr/share/wordnet; Princeton WordNet licence).

WordNet nouns are chosen from the synsets below *physical_entity* (hypernym pointers ``@`` and
``@i`` in data.noun), leaving out instances (named things) and the chemistry and physiology under
``EXCLUDED_ROOTS``: the lexicographer files that hold things one can see are taken whole
(``LEXFILE_MIN_COUNT``: animals, artifacts, body parts, food, natural objects, plants,
substances), and people (workers, adults, children, entertainers, contestants, travellers),
weather, light, fire and land areas only below the synsets in ``ROOTS``. "Common" is the sense's
tag count in cntlist.rev (SemCor): a lemma is kept when one of its concrete senses was tagged at
least the count its lexicographer file or root asks for, and at least ``MIN_PHYSICAL_SHARE`` of
all its tagged noun uses are physical ones, so "action" or "way", whose artifact senses are rare,
stay out (``SHARE_EXEMPT`` names the everyday exceptions, such as "fire" and "school"). Lemmas
that are proper nouns (capitalised), longer than two words, or hold anything but letters and
hyphens are skipped, and so are the words in ``NOT_VISUAL`` (abstract or too general),
``NOT_SEEN`` (people by relation or opinion), ``JARGON`` (technical or archaic) and ``OFFENSIVE``
(slurs, vulgar and demeaning words).

The output is sorted, lower case and deduplicated, with a ``#`` comment header naming the sources
and carrying WordNet's licence (it asks for its notice on all copies). It depends only on the
embedded lists and the WordNet 3.0 files, so a rebuild gives the same bytes; tests/test_concepts.py
checks that.

Usage: python3 scripts/build_concepts.py [--wordnet DIR] [--output FILE]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "plugins" / "analyzer_classify" / "concepts.txt"
DEFAULT_WORDNET = Path("/usr/share/wordnet")


def parse_list(text: str) -> list[str]:
    return [name.strip().lower() for name in text.replace("\n", " ").split(",") if name.strip()]


def _words(text: str) -> frozenset[str]:
    return frozenset(parse_list(text))


COCO = """
person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, stop sign,
parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack, umbrella,
handbag, tie, suitcase, frisbee, skis, snowboard, sports ball, kite, baseball bat, baseball glove, skateboard,
surfboard, tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich, orange,
broccoli, carrot, hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, tv,
laptop, mouse, remote, keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, book, clock, vase,
scissors, teddy bear, hair drier, toothbrush
"""
"""COCO 2017's 80 object categories, in their category-id order."""

OPEN_IMAGES = """
accordion, adhesive tape, aircraft, airplane, alarm clock, alpaca, ambulance, ant, antelope, apple, armadillo,
artichoke, asparagus, axe, backpack, bagel, balance beam, ball, balloon, banana, banjo, barge, barrel,
baseball bat, baseball glove, bat, bathroom cabinet, bathtub, beaker, bear, bed, bee, beehive, beer, beetle,
bell pepper, belt, bench, bicycle, bicycle helmet, bidet, billboard, billiard table, binoculars, bird,
blender, blue jay, boat, bomb, book, bookcase, boot, bottle, bottle opener, bow and arrow, bowl, box, boy,
brassiere, bread, briefcase, broccoli, brown bear, building, bull, burrito, bus, butterfly, cabbage, cake,
calculator, camel, camera, can opener, canary, candle, candy, cannon, canoe, cantaloupe, car, carrot, cart,
cassette deck, castle, cat, caterpillar, cattle, ceiling fan, cello, centipede, chainsaw, chair, cheese,
cheetah, chest of drawers, chicken, chisel, chopsticks, christmas tree, clock, closet, coat, cocktail,
cocktail shaker, coconut, coffee, coffee cup, coffee table, coffeemaker, coin, common fig, computer keyboard,
computer monitor, computer mouse, convenience store, cookie, cosmetics, couch, countertop, cowboy hat, crab,
cream, cricket ball, crocodile, croissant, crown, crutch, cucumber, cupboard, curtain, cutting board, dagger,
deer, desk, dessert, diaper, dice, digital clock, dinosaur, dishwasher, dog, dog bed, doll, dolphin, door,
door handle, doughnut, dragonfly, drawer, dress, drill, drink, drinking straw, drum, duck, dumbbell, eagle,
earrings, egg, elephant, envelope, eraser, face powder, falcon, fax, fedora, filing cabinet, fire hydrant,
fireplace, fish, flag, flashlight, flower, flowerpot, flute, flying disc, food processor, football,
football helmet, fork, fountain, fox, french fries, frog, fruit, frying pan, gas stove, giraffe, girl,
glasses, glove, goat, goggles, goldfish, golf ball, golf cart, gondola, goose, grape, grapefruit, guacamole,
guitar, hair dryer, hair spray, hamburger, hammer, hamster, hand dryer, handbag, handgun, harbor seal,
harmonica, harp, harpsichord, hat, headphones, heater, hedgehog, helicopter, helmet, high heels, hippopotamus,
honeycomb, horn, horse, hot dog, house, houseplant, human arm, human beard, human ear, human eye, human face,
human foot, human hair, human hand, human head, human leg, human mouth, human nose, humidifier, ice cream,
indoor rower, infant bed, insect, jacket, jaguar, jeans, jellyfish, jet ski, jug, juice, kangaroo, kettle,
kitchen knife, kite, knife, koala, ladder, ladle, ladybug, lamp, lantern, laptop, lavender, lemon, leopard,
lifejacket, light bulb, light switch, lighthouse, lily, limousine, lion, lipstick, lizard, lobster, loveseat,
lynx, magpie, man, mango, maple, maracas, measuring cup, mechanical fan, microphone, microwave oven, milk,
miniskirt, mirror, missile, mixing bowl, mobile phone, monkey, motorcycle, mouse, muffin, mug, mule, mushroom,
musical keyboard, nail, necklace, nightstand, oboe, office building, orange, ostrich, otter, oven, owl,
oyster, paddle, palm tree, pancake, panda, paper towel, parachute, parking meter, parrot, pasta, pastry,
peach, pear, pen, pencil case, pencil sharpener, penguin, perfume, person, piano, picnic basket,
picture frame, pig, pillow, pineapple, pitcher, pizza, pizza cutter, plant, plastic bag, plate, platter,
polar bear, pomegranate, popcorn, porch, porcupine, poster, potato, pressure cooker, pretzel, printer,
pumpkin, punching bag, rabbit, raccoon, racket, radish, raven, red panda, refrigerator, remote control,
rhinoceros, rifle, rocket, roller skates, rose, rugby ball, ruler, salad, sandal, sandwich, saucer, saxophone,
scarf, scissors, scoreboard, scorpion, screwdriver, sculpture, sea lion, sea turtle, seafood, seahorse,
seat belt, serving tray, sewing machine, shark, sheep, shelf, shellfish, shirt, shorts, shotgun, shower,
shrimp, sink, skateboard, ski, skirt, skull, skunk, skyscraper, slow cooker, snail, snake, snowboard, snowman,
snowmobile, snowplow, soap dispenser, sock, sofa bed, sombrero, sparrow, spatula, spice rack, spider, spoon,
sports uniform, squid, squirrel, stairs, stapler, starfish, stationary bicycle, stethoscope, stool, stop sign,
strawberry, street light, stretcher, submarine, submarine sandwich, suit, suitcase, sun hat, sunflower,
sunglasses, surfboard, sushi, swan, swim cap, swimming pool, swimwear, sword, syringe, table,
table tennis racket, tablet computer, taco, tank, tap, tart, taxi, tea, teapot, teddy bear, telephone,
television, tennis ball, tennis racket, tent, tiara, tie, tiger, tin can, tire, toaster, toilet, toilet paper,
tomato, toothbrush, torch, tortoise, towel, tower, traffic light, traffic sign, train, treadmill, tree,
tree house, tripod, trombone, trousers, truck, trumpet, turkey, turtle, umbrella, unicycle, van, vase,
vegetable, vehicle registration plate, violin, volleyball, waffle, waffle iron, wall clock, wardrobe,
washing machine, waste container, watch, watermelon, whale, wheel, wheelchair, whisk, whiteboard, willow,
window, window blind, wine, wine glass, wine rack, wok, woman, wood-burning stove, woodpecker, worm, wrench,
zebra, zucchini
"""
"""Open Images V7 boxable classes (display names, lower case), less the grouping and brand classes."""

NOUN_LEXFILES = {
    "noun.animal": 5,
    "noun.artifact": 6,
    "noun.body": 8,
    "noun.food": 13,
    "noun.object": 17,
    "noun.plant": 20,
    "noun.substance": 27,
}
"""Numbers of the lexicographer files taken whole (lexnames(5WN))."""

LEXFILE_MIN_COUNT = {
    "noun.animal": 1,
    "noun.artifact": 1,
    "noun.body": 5,
    "noun.food": 1,
    "noun.object": 1,
    "noun.plant": 1,
    "noun.substance": 6,
}
"""Lexicographer files taken whole (below physical_entity), with the tag count a sense needs."""

ROOTS = {
    # People: only the kinds one can see, and more tags needed (noun.person is full of epithets).
    "worker": ("09632518", 3),
    "adult": ("09605289", 3),
    "juvenile": ("09622049", 3),
    "entertainer": ("09616922", 3),
    "contestant": ("09613191", 3),
    "traveler": ("09629752", 3),
    # Weather, light, fire and smoke (noun.phenomenon and noun.process are mostly abstract).
    "atmospheric_phenomenon": ("11425580", 1),
    "light": ("11473954", 1),
    "lightning": ("11475279", 1),
    "fire": ("13480848", 1),
    "smoke": ("11508092", 1),
    # Land: cities, parks, deserts (noun.location is mostly "place", "area", "region").
    "geographical_area": ("08574314", 2),
}
"""Synsets (a lemma: offset, tag count needed) whose hyponyms are taken from other lexicographer files."""

EXCLUDED_ROOTS = {
    "organic_compound": "14727670",
    "chemical": "14806838",
    "atom": "14619225",
    "molecule": "14682133",
    "ion": "09315159",
    "elementary_particle": "09272085",
    "subatomic_particle": "09386422",
    "cell": "00006484",
    "blood_vessel": "05417975",
    "gland": "05327767",
    "hormone": "05407119",
    "drug": "03247620",
}
"""Synsets whose hyponyms are left out: chemistry and physiology, not things a photo shows."""

PHYSICAL_ENTITY = "00001930"
MIN_PHYSICAL_SHARE = 0.2
"""Part of a lemma's tagged noun uses that must be physical (concrete) senses."""

SHARE_EXEMPT = _words("arrow, baseball, court, drink, fire, football, forest, gold, market, school, village")
"""Everyday things whose most frequent senses happen to be abstract ("fire" the act, "school" the
institution): kept whatever their physical share."""


NOT_VISUAL = _words(
    """
    abode, access, accessory, accouterment, addition, additive, adjunct, agent, aggregate, anachronism, area,
    assemblage, assembly, atmosphere, attachment, base, bearer, being, bit, blue, blue air, body, bond, bottom,
    break seal, breakable, burden, by-product, cache, calculus, celestial body, center, chain, classic,
    collector, commodity, compound, concentrate, constituent, contrivance, copy, core, corner, cosmos, cover,
    creation, cut, cutting, depicted object, depression, draw, dregs, drive, dun, duplication, element, end,
    entity, essential, etcetera, exchange, export, fake, feature, female, field, formulation, fraction,
    fragment, front, gap, gray, habitat, heavenly body, imitation, import, impurity, ingredient,
    innovation, inspiration, installation, interface, inventory, invention, item, left, load, loading, local,
    longshot, male, master, material, means, mechanism, medium, member, merchandise, middle, mixture,
    modification, motif, natural order, nature, necessity, need, object, obstacle, obstruction, opening,
    original, output, overload, paraphernalia, part, particle, parts, period piece, piece, place, point,
    portion, preparation, prey, primary, product, quiet, range, region, release, remains, repertory,
    representation, requirement, reverse, right, round, safety, section, segment, set, setting, setup, sham,
    shielding, side, site, solid, solution, source, space, sphere, spot, spread, standby, stray, strip,
    structure, stuff, subject, subsection, supplement, surface, sustenance, system, thing, tie-in, top, total,
    trace, transport, transportation, trapping, unit, universe, variable, wash, way out, ways, whole, work,
    workings, works, world, young,
    """
)
"""Abstract, too general, or a position rather than a thing: not a useful label although a sense is concrete."""

NOT_SEEN = _words(
    """
    alien, caller, companion, conservative, counsel, deportee, foe, foreigner, guest, hearing officer,
    immigrant, liberal, lieutenant governor, loser, mate, miss, modern man, mover, official, old boy,
    opponent, ordinary, puncher, pursuer, reactionary, refugee, relative, sir, southpaw, stranger,
    subordinate, survivor, traditionalist, vagabond, widow, wife, winner,
    """
)
"""People named by a relation, opinion or status that a photo does not show."""

JARGON = _words(
    """
    actinometer, active, alkali bee, alveolus, amen corner, analyzer, andrena, anionic, antibody, antigen,
    antiserum, argon, audio system, ballast resistor, batwing, bird shot, black body, bogy, bomb calorimeter,
    bouncing betty, boucle, breastwork, bronchiole, bronchus, builder, calorimeter, cantle, capillary,
    capillary tubing, chevaux-de-frise, ciliate, ciliated protozoan, cilium, circuitry, closed circuit,
    clodhopper, color bearer, color sergeant, commutator, communication system, conducting wire, congress gaiter,
    conjugate, corona, cowling, creep feed, crowbait, crupper, cryostat, crystallite, declivity, detonating
    fuse, diatom, effluent, electric circuit, electrophorus, epiphysis, feed bunk, flagellated protozoan, fleck,
    gallus, gamecock, gearset, gegenschein, granule, grinding, hand blower, handspike, hardbake, heaver, hilum,
    holystone, hypothalamus, image orthicon, inclusion body, interferometer, interlayer, intrenchment, inversion,
    joss, lobe, lobscouse, lobscuse, manifold, manometer, maria, megaton bomb, membrane, micelle,
    micrometeorite, millivoltmeter, moire, mucosa, multichannel recorder, musket ball, nectary, neocortex,
    neutron bomb, nubbin, nucleus, oil-water interface, orthicon, oscillator, paramagnet, petit dejeuner,
    phloem, pique, pith, plant tissue, pleura, potentiometer, premix, protozoan, pseudophloem, pulse generator,
    pyrometer, radio source, random memory, random-access memory, receiving system, rectifier, resistance
    thermometer, revetment, rifle ball, rooftree, roulette ball, royal brace, rumen, russet, saline, school
    system, scraping, septum, serum, sewage system, shantung, shaving, short bone, shunt, slide action,
    small-arm, snip, sowbelly, spectator pump, spectrometer, spectrophotometer, splicing, square block,
    stacked heel, starting buffer, stub, surface-active agent, suspension, sweat bag, television system,
    terra firma, thermistor, thermocouple, thermopile, thill, thwart, thyroglobulin, topgallant mast,
    transducer, turkey cock, twenty-two rifle, ultracentrifuge, unit cell, variable resistor, velours, viand,
    viscometer, weapon system, weapons system, winding-clothes, worsted, wrack, xylem,
    """
)
"""Technical, archaic or rare words (SemCor's counts come partly from technical texts)."""

OFFENSIVE = _words(
    """
    arse, ass, asshole, bastard, bawdyhouse, bimbo, bitch, black man, black woman, brothel, bugger, butt,
    charnel, chink, cock, concentration camp, contraceptive, contraceptive device, coon, coquette, crap,
    cripple, cunt, dago, dick, dyke, electric chair, fag, faggot, fairy, fatso, fresh fish, funny house,
    funny wagon, gallows, gas chamber, gibbet, gook, hag, harem, harlot, ho, honky, honky-tonk, honkytonk,
    hooker, john, kamikaze, kike, mental institution, midget, mistress, nigger, nuthouse, old maid, paki,
    piss, prick, prostitute, pussy, quack, queer, redskin, retard, scourge, shit, slut, spic, spook, squaw,
    stiff, tit, titty, tramp, twat, voodoo, wetback, white man, white woman, whore, wop,
    """
)
"""Slurs, vulgar words, words that label people demeaningly, and grim places a photo should not be
labelled as by mistake (each left out even where one of its senses is harmless)."""

EXCLUDED_WORDS = NOT_VISUAL | NOT_SEEN | JARGON | OFFENSIVE

LEMMA = re.compile(r"[a-z]+(?:-[a-z]+)*(?: [a-z]+(?:-[a-z]+)*)?")
"""One or two lower-case words of letters and hyphens (WordNet writes spaces as "_")."""


@dataclass
class Synset:
    lexfile: int
    lemmas: list[tuple[str, int]]
    """(lemma as written in data.noun, lex_id)."""
    hypernyms: list[str]
    instance: bool


def read_data_noun(path: Path) -> tuple[dict[str, Synset], list[str]]:
    """Synsets by offset, and the licence text at the top of the file."""
    synsets: dict[str, Synset] = {}
    licence: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  "):  # "  12 licence text  "
                licence.append(line.strip().partition(" ")[2].rstrip())
                continue
            fields = line.partition(" | ")[0].split()
            count = int(fields[3], 16)
            lemmas = [(fields[4 + 2 * i], int(fields[5 + 2 * i], 16)) for i in range(count)]
            at = 4 + 2 * count
            hypernyms: list[str] = []
            instance = False
            for i in range(int(fields[at])):
                symbol, offset = fields[at + 1 + 4 * i], fields[at + 2 + 4 * i]
                if symbol in ("@", "@i"):
                    hypernyms.append(offset)
                instance = instance or symbol == "@i"
            synsets[fields[0]] = Synset(int(fields[1]), lemmas, hypernyms, instance)
    return synsets, licence


def read_counts(path: Path) -> dict[str, int]:
    """Tag count by sense key ("dog%1:05:00::"), nouns only."""
    counts: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            key, _, count = line.split()
            if "%1:" in key:
                counts[key] = int(count)
    return counts


def ancestors(synsets: dict[str, Synset]) -> dict[str, frozenset[str]]:
    """Every synset's hypernym closure, itself included (iterative: WordNet's chains are deep)."""
    done: dict[str, frozenset[str]] = {}
    for start in synsets:
        stack = [start]
        while stack:
            offset = stack[-1]
            if offset in done:
                stack.pop()
                continue
            pending = [h for h in synsets[offset].hypernyms if h not in done]
            if pending:
                stack.extend(pending)
                continue
            closure = {offset}
            for hypernym in synsets[offset].hypernyms:
                closure |= done[hypernym]
            done[offset] = frozenset(closure)
            stack.pop()
    return done


def wordnet_concepts(wordnet: Path) -> tuple[list[str], list[str]]:
    """Common concrete nouns (sorted), and WordNet's licence text."""
    synsets, licence = read_data_noun(wordnet / "data.noun")
    counts = read_counts(wordnet / "cntlist.rev")
    for name, (offset, _) in ROOTS.items():
        _check_synset(synsets, name, offset)
    for name, offset in {**EXCLUDED_ROOTS, "physical_entity": PHYSICAL_ENTITY}.items():
        _check_synset(synsets, name, offset)
    closure = ancestors(synsets)
    excluded = frozenset(EXCLUDED_ROOTS.values())
    lexfile_min = {NOUN_LEXFILES[name]: count for name, count in LEXFILE_MIN_COUNT.items()}

    def sense_key(lemma: str, synset: Synset, lex_id: int) -> str:
        return f"{lemma.lower()}%1:{synset.lexfile:02d}:{lex_id:02d}::"

    total: Counter[str] = Counter()
    physical: Counter[str] = Counter()
    chosen: set[str] = set()
    for offset, synset in synsets.items():
        above = closure[offset]
        is_physical = PHYSICAL_ENTITY in above
        for lemma, lex_id in synset.lemmas:
            count = counts.get(sense_key(lemma, synset, lex_id), 0)
            total[lemma.lower()] += count
            if is_physical:
                physical[lemma.lower()] += count
        if not is_physical or synset.instance or above & excluded:
            continue
        needed = lexfile_min.get(synset.lexfile)
        if needed is None:
            needs = [count for root, count in ROOTS.values() if root in above]
            if not needs:
                continue
            needed = min(needs)
        for lemma, lex_id in synset.lemmas:
            name = lemma.replace("_", " ")
            if LEMMA.fullmatch(name) and counts.get(sense_key(lemma, synset, lex_id), 0) >= needed:
                chosen.add(name)
    concepts = sorted(
        name
        for name in chosen
        if name not in EXCLUDED_WORDS
        and (
            name in SHARE_EXEMPT
            or physical[name.replace(" ", "_")] >= MIN_PHYSICAL_SHARE * total[name.replace(" ", "_")]
        )
    )
    return concepts, licence


def _check_synset(synsets: dict[str, Synset], name: str, offset: str) -> None:
    if offset not in synsets or name not in (lemma for lemma, _ in synsets[offset].lemmas):
        raise SystemExit(f"WordNet synset {offset} is not {name!r}: these offsets are WordNet 3.0's")


def build(wordnet: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """The file's text, and per source: (names it gives, names new to the bank)."""
    sources = {
        "COCO 2017": parse_list(COCO),
        "Open Images V7": parse_list(OPEN_IMAGES),
    }
    words, licence = wordnet_concepts(wordnet)
    sources["WordNet 3.0"] = words
    bank: set[str] = set()
    stats: dict[str, tuple[int, int]] = {}
    for source, names in sources.items():
        new = set(names) - bank
        bank |= new
        stats[source] = (len(set(names)), len(new))
    header = [
        "Concept bank of the classify plugin (analyzer classify without labels): one concept a line.",
        "Built by scripts/build_concepts.py; do not edit by hand. Sources, licences, rebuilding: CONCEPTS.md.",
        "- COCO 2017 object categories: annotations (c) COCO Consortium, CC BY 4.0.",
        "- Open Images V7 boxable classes (a selection): annotations (c) Google LLC, CC BY 4.0.",
        "- WordNet 3.0 nouns (a selection of common concrete ones), under WordNet's licence:",
        "",
        *licence,
    ]
    lines = [f"# {line}".rstrip() for line in header] + sorted(bank)
    return "\n".join(lines) + "\n", stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--wordnet", type=Path, default=DEFAULT_WORDNET, help="WordNet 3.0 dict folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write")
    args = parser.parse_args(argv)
    for name in ("data.noun", "cntlist.rev"):
        if not (args.wordnet / name).is_file():
            print(f"{args.wordnet / name} is missing: apt-get install wordnet-base", file=sys.stderr)
            return 1
    text, stats = build(args.wordnet)
    args.output.write_text(text, encoding="utf-8")
    for source, (given, new) in stats.items():
        print(f"{source}: {given} concepts, {new} new to the bank")
    print(f"{args.output}: {sum(new for _, new in stats.values())} concepts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
