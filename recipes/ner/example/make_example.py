"""Writes the small English CoNLL example (train/valid/test) that recipes/ner/conll.yaml uses.

Templated sentences over made-up names, places and organisations, BIO tags; deterministic.
Run: python recipes/ner/example/make_example.py
"""

import random
from pathlib import Path

PER = ["Ada Brook", "Tomas Vell", "Mira Okafor", "Jon", "Lena Hart", "Ravi Senn", "Oona Pike", "Karl Dunmore"]
LOC = ["Paris", "New Harbor", "Lake Mora", "Brisk", "Old Town", "Kestrel Bay", "Vantor", "Hollis"]
ORG = ["Acme Corp", "the Blue Guild", "Norden Bank", "Vell Labs", "City Council", "Pike & Sons"]
TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "{PER} moved to {LOC} last year .",
    "{ORG} opened an office in {LOC} .",
    "Yesterday {PER} met {PER} at {ORG} .",
    "The weather in {LOC} was cold .",
    "{ORG} hired {PER} .",
    "Nobody from {LOC} came .",
    "We saw nothing unusual today .",
]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for part in rng.choice(TEMPLATES).split():
        if part.startswith("{") and part.strip("{}.") in ("PER", "LOC", "ORG"):
            kind = part.strip("{}")
            words = rng.choice({"PER": PER, "LOC": LOC, "ORG": ORG}[kind]).split()
            out += [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]
        else:
            out.append((part, "O"))
    return out


def main() -> None:
    rng = random.Random(7)
    here = Path(__file__).parent
    for name, count in (("train", 400), ("valid", 60), ("test", 60)):
        lines = ["-DOCSTART- -X- O O", ""]
        for _ in range(count):
            lines += [f"{w} {t}" for w, t in sentence(rng)] + [""]
        (here / f"{name}.conll").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
