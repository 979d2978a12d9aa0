"""Generate the smoke corpus shipped in data/smoke/: small, English-like, deterministic and learnable.

    python tools/make_smoke_corpus.py                 # data/smoke/corpus.jsonl (+ tokenizer + .bin/.idx)
    python tools/make_smoke_corpus.py --corpus-only   # only the JSONL

A fixed little world (people with a home town, a job, a pet, a favourite colour and food, a sibling; towns with a
river and a market) is described by templated documents: biographies, question/answer drills, short stories whose
characters stay consistent, arithmetic, and counting/ordering sequences. The same facts recur across documents, so
a tiny transformer can learn them and a small student has something to be distilled from a bigger teacher.
Everything comes from one `random.Random(seed)`: the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from taidtron.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]

NAMES = [
    ("Mia", "she"),
    ("Tom", "he"),
    ("Ada", "she"),
    ("Leo", "he"),
    ("Zoe", "she"),
    ("Sam", "he"),
    ("Ivy", "she"),
    ("Max", "he"),
    ("Eva", "she"),
    ("Ben", "he"),
    ("Lily", "she"),
    ("Noah", "he"),
    ("Ruby", "she"),
    ("Finn", "he"),
    ("Nora", "she"),
    ("Owen", "he"),
    ("Cleo", "she"),
    ("Jack", "he"),
    ("Iris", "she"),
    ("Hugo", "he"),
    ("Alma", "she"),
    ("Otto", "he"),
    ("Rosa", "she"),
    ("Eli", "he"),
]
TOWNS = [
    "Brindle",
    "Ashford",
    "Kellmoor",
    "Dunmere",
    "Harrow Vale",
    "Pebblebrook",
    "Oakridge",
    "Marlow",
    "Fennick",
    "Thistlewood",
    "Corran",
    "Wren Hollow",
]
RIVERS = ["Osk", "Lune", "Tamar", "Wey", "Brent", "Calder", "Esk", "Frome", "Kennet", "Tees", "Ure", "Dove"]
GOODS = ["apples", "cheese", "wool", "bread", "honey", "fish", "pottery", "candles", "rope", "pears", "salt", "tea"]
JOBS = [
    "baker",
    "farmer",
    "teacher",
    "painter",
    "doctor",
    "carpenter",
    "sailor",
    "gardener",
    "tailor",
    "miller",
    "fisher",
    "singer",
]
PETS = ["dog", "cat", "rabbit", "goat", "parrot", "horse", "duck", "tortoise"]
PET_NAMES = [
    "Pip",
    "Biscuit",
    "Luna",
    "Rex",
    "Clover",
    "Pepper",
    "Misty",
    "Button",
    "Juniper",
    "Socks",
    "Maple",
    "Ziggy",
    "Hazel",
    "Toffee",
    "Bramble",
    "Nugget",
    "Olive",
    "Pickle",
    "Sunny",
    "Wisp",
    "Dot",
    "Fudge",
    "Basil",
    "Comet",
]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "brown", "pink", "grey", "gold"]
FOODS = ["soup", "pie", "rice", "plums", "eggs", "cake", "beans", "noodles", "carrots", "figs", "toast", "stew"]
OBJECTS = [
    "ball",
    "kite",
    "hat",
    "key",
    "box",
    "drum",
    "lamp",
    "book",
    "map",
    "shell",
    "cup",
    "bell",
    "scarf",
    "coin",
    "boat",
    "ring",
]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "foggy", "snowy", "bright"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def pronouns(p: str) -> dict[str, str]:
    return {"P": p.capitalize(), "p": p, "pos": "her" if p == "she" else "his", "obj": "her" if p == "she" else "him"}


def make_world(rng: random.Random) -> tuple[list[dict], dict[str, dict]]:
    towns = {}
    for town, river, good in zip(TOWNS, RIVERS, rng.sample(GOODS, len(GOODS))):
        size = rng.choice(["small", "busy", "quiet", "old"])
        towns[town] = {"name": town, "river": river, "good": good, "size": size}
    people = []
    pet_names = rng.sample(PET_NAMES, len(NAMES))
    for i, (name, p) in enumerate(NAMES):
        people.append(
            {
                "name": name,
                **pronouns(p),
                "town": rng.choice(TOWNS),
                "job": rng.choice(JOBS),
                "pet": rng.choice(PETS),
                "pet_name": pet_names[i],
                "color": rng.choice(COLORS),
                "food": rng.choice(FOODS),
                "age": rng.randint(19, 71),
            }
        )
    order = list(range(len(people)))
    rng.shuffle(order)
    for a, b in zip(order[0::2], order[1::2]):  # disjoint sibling pairs
        people[a]["sibling"], people[b]["sibling"] = people[b]["name"], people[a]["name"]
    return people, towns


def fact(rng: random.Random, x: dict, kind: str) -> str:
    n = x["name"]
    options = {
        "town": [f"{n} lives in {x['town']}.", f"{n} is from {x['town']}.", f"{x['P']} lives in {x['town']}."],
        "job": [f"{n} works as a {x['job']}.", f"{n} is a {x['job']}.", f"By trade, {n} is a {x['job']}."],
        "pet": [
            f"{n} has a {x['pet']} called {x['pet_name']}.",
            f"{x['pet_name']} is the {x['pet']} of {n}.",
            f"{n} keeps a {x['pet']} named {x['pet_name']}.",
        ],
        "color": [f"{n}'s favorite color is {x['color']}.", f"{n} likes the color {x['color']} best."],
        "food": [f"{n} likes to eat {x['food']}.", f"The favorite food of {n} is {x['food']}."],
        "age": [f"{n} is {x['age']} years old.", f"{n} is {x['age']}."],
        "sibling": [f"{n} and {x['sibling']} are siblings.", f"{n} has a sibling called {x['sibling']}."],
    }
    return rng.choice(options[kind])


FACT_KINDS = ["town", "job", "pet", "color", "food", "age", "sibling"]


def doc_bio(rng, people, towns) -> str:
    x = rng.choice(people)
    kinds = rng.sample(FACT_KINDS, rng.randint(3, len(FACT_KINDS)))
    out = [f"This is {x['name']}."] + [fact(rng, x, k) for k in kinds]
    if rng.random() < 0.5:
        t = towns[x["town"]]
        out.append(f"{x['town']} is a {t['size']} town on the river {t['river']}, known for its {t['good']}.")
    return " ".join(out)


def doc_qa(rng, people, towns) -> str:
    lines = []
    for _ in range(rng.randint(3, 6)):
        x = rng.choice(people)
        n = x["name"]
        q, a = rng.choice(
            [
                (f"Where does {n} live?", f"{n} lives in {x['town']}."),
                (f"What does {n} do?", f"{n} works as a {x['job']}."),
                (f"What pet does {n} have?", f"{n} has a {x['pet']} called {x['pet_name']}."),
                (f"What is {n}'s favorite color?", f"{n}'s favorite color is {x['color']}."),
                (f"What does {n} like to eat?", f"{n} likes to eat {x['food']}."),
                (f"How old is {n}?", f"{n} is {x['age']} years old."),
                (f"Who is {n}'s sibling?", f"{n}'s sibling is {x['sibling']}."),
                (
                    f"Which river flows through {x['town']}?",
                    f"The river {towns[x['town']]['river']} flows through {x['town']}.",
                ),
            ]
        )
        lines.append(f"Q: {q}\nA: {a}")
    return "\n".join(lines)


def doc_arithmetic(rng, people, towns) -> str:
    lines = []
    for _ in range(rng.randint(4, 9)):
        a, b = rng.randint(0, 12), rng.randint(0, 12)
        op = rng.choice(["plus", "minus", "times", "words"])
        if op == "plus":
            lines.append(f"{a} plus {b} is {a + b}.")
        elif op == "minus":
            a, b = max(a, b), min(a, b)
            lines.append(f"{a} minus {b} is {a - b}.")
        elif op == "times":
            lines.append(f"{a} times {b} is {a * b}.")
        else:
            a, b = rng.randint(0, 6), rng.randint(0, 6)
            lines.append(f"{NUMBER_WORDS[a].capitalize()} and {NUMBER_WORDS[b]} make {NUMBER_WORDS[a + b]}.")
    return "\n".join(lines)


def doc_sequence(rng, people, towns) -> str:
    kind = rng.choice(["up", "down", "step", "letters", "days", "months"])
    if kind == "up":
        a = rng.randint(0, 40)
        b = a + rng.randint(4, 12)
        return f"Count from {a} to {b}: " + ", ".join(map(str, range(a, b + 1))) + "."
    if kind == "down":
        a = rng.randint(10, 50)
        b = a - rng.randint(4, 10)
        return f"Count down from {a} to {b}: " + ", ".join(map(str, range(a, b - 1, -1))) + "."
    if kind == "step":
        s, a = rng.randint(2, 5), rng.randint(0, 10)
        return f"Count by {s} from {a}: " + ", ".join(str(a + s * i) for i in range(rng.randint(5, 10))) + "."
    if kind == "letters":
        i = rng.randint(0, 18)
        j = min(25, i + rng.randint(4, 8))
        return f"The letters from {LETTERS[i]} to {LETTERS[j]} are " + " ".join(LETTERS[i : j + 1]) + "."
    seq = DAYS if kind == "days" else MONTHS
    i = rng.randrange(len(seq))
    out = [f"After {seq[(i + k) % len(seq)]} comes {seq[(i + k + 1) % len(seq)]}." for k in range(rng.randint(3, 6))]
    return " ".join(out)


def doc_story(rng, people, towns) -> str:
    x, y = rng.sample(people, 2)
    n, m = x["name"], y["name"]
    obj, color = rng.choice(OBJECTS), rng.choice(COLORS)
    t = towns[x["town"]]
    weather = rng.choice(WEATHER)
    opening = rng.choice(
        [
            f"Once upon a time, there was a {x['job']} called {n} who lived in {x['town']}.",
            f"{n} the {x['job']} lived in {x['town']}, a {t['size']} town on the river {t['river']}.",
            f"Long ago in {x['town']}, there lived a {x['job']} named {n}.",
        ]
    )
    out = [opening, f"{x['P']} had a {x['pet']} called {x['pet_name']}."]
    plot = rng.choice(["found", "lost", "gift", "trip", "market"])
    if plot == "found":
        out += [
            f"One {weather} day, {n} found a {color} {obj} by the river {t['river']}.",
            f"{x['P']} showed the {color} {obj} to {m}.",
            f'"What a fine {obj}!" said {m}.',
            f"{n} gave the {obj} to {m}, and {m} kept the {color} {obj} forever.",
        ]
    elif plot == "lost":
        out += [
            f"{n} had a {color} {obj}, and {x['p']} loved it very much.",
            f"One {weather} morning, the {color} {obj} was gone.",
            f"{n} looked in the house and in the garden, but the {obj} was not there.",
            f"Then {x['pet_name']} the {x['pet']} ran to {n} with the {color} {obj}.",
            f"{n} was happy again, and {x['p']} gave {x['pet_name']} some {x['food']}.",
        ]
    elif plot == "gift":
        out += [
            f"It was the birthday of {m}, who lived in {y['town']}.",
            f"{n} made a {y['color']} {obj} because {y['color']} is the favorite color of {m}.",
            f"{n} walked to {y['town']} with {x['pet_name']}.",
            f'"Thank you, {n}!" said {m}. "I love {y["color"]} things."',
            f"They ate {y['food']} together, because {m} likes {y['food']}.",
        ]
    elif plot == "trip":
        u = towns[y["town"]]
        out += [
            f"One {weather} day, {n} went to visit {m} in {y['town']}.",
            f"{y['town']} is on the river {u['river']} and is known for its {u['good']}.",
            f"{m} works as a {y['job']}, so {m} showed {n} how a {y['job']} works.",
            f"In the evening, {n} bought some {u['good']} and went home to {x['town']}.",
        ]
    else:
        out += [
            f"Every {rng.choice(DAYS)}, {n} went to the market in {x['town']} to sell {t['good']}.",
            f"One day, {m} came to the market and bought {rng.randint(2, 9)} {t['good']}.",
            f"{m} paid with a {color} coin, and {n} put the coin in a box.",
            f"Then {n} went home and cooked {x['food']}.",
        ]
    out.append("The end.")
    return " ".join(out)


KINDS = [(doc_bio, 0.25), (doc_qa, 0.15), (doc_arithmetic, 0.12), (doc_sequence, 0.10), (doc_story, 0.38)]


def make_corpus(seed: int, target_bytes: int) -> list[str]:
    """Documents, in order, until their UTF-8 size (as JSONL) reaches target_bytes."""
    rng = random.Random(seed)
    people, towns = make_world(rng)
    fns, weights = zip(*KINDS)
    docs, size = [], 0
    while size < target_bytes:
        text = rng.choices(fns, weights)[0](rng, people, towns)
        docs.append(text)
        size += len(json.dumps({"text": text})) + 1
    return docs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(REPO / "data" / "smoke"), help="where to write (default: data/smoke)")
    ap.add_argument("--seed", type=int, default=1234, help="generator seed (default 1234, the shipped corpus)")
    ap.add_argument("--size-kb", type=int, default=800, help="approximate corpus size in KiB (default 800)")
    ap.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary (default 1024)")
    ap.add_argument("--corpus-only", action="store_true", help="write corpus.jsonl only, no tokenizer or .bin/.idx")
    args = ap.parse_args(argv)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.jsonl"
    docs = make_corpus(args.seed, args.size_kb * 1024)
    atomic_write_text(corpus, "".join(json.dumps({"text": d}) + "\n" for d in docs))
    print(f"wrote {corpus}: {len(docs)} documents, {corpus.stat().st_size / 1024:.0f} KiB")
    if args.corpus_only:
        return

    from taidtron.data.indexed import build_indexed_dataset
    from taidtron.data.tokenizer_training import train_sentencepiece

    if out.resolve().is_relative_to(REPO):  # record repo-relative paths in the shipped .meta.json
        os.chdir(REPO)
        out = out.resolve().relative_to(REPO)
        corpus = out / corpus.name
    model = train_sentencepiece([corpus], out / "tokenizer", vocab_size=args.vocab_size, model_type="bpe")
    print(f"wrote {model}: {model.stat().st_size / 1024:.0f} KiB")
    meta = build_indexed_dataset([corpus], out / "smoke_text_document", model, force=True, progress=False)
    print(f"wrote {out / 'smoke_text_document'}.bin/.idx: {meta['documents']} documents, {meta['tokens']} tokens")


if __name__ == "__main__":
    main()
