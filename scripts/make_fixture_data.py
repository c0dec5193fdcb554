"""Regenerates fixtures/data/*.jsonl: a tiny, deterministic two-class text classification set.

The committed files are the fixture; this script only documents how they were made.
Run: python scripts/make_fixture_data.py
"""
import json
import random
from pathlib import Path

POSITIVE = "good great fine lovely superb pleasant happy bright warm clever".split()
NEGATIVE = "bad awful poor dreadful boring sad dull cold broken clumsy".split()
NEUTRAL = "the a movie book film plot story actor scene it was is very quite rather and but".split()


def sentence(rng: random.Random, label: str) -> str:
    cue, other = (POSITIVE, NEGATIVE) if label == "pos" else (NEGATIVE, POSITIVE)
    words = rng.choices(NEUTRAL, k=rng.randint(4, 9)) + rng.choices(cue, k=rng.randint(1, 2))
    if rng.random() < 0.4:  # noise, so the task is not trivially separable
        words += rng.choices(other, k=rng.randint(1, 2))
    rng.shuffle(words)
    return " ".join(words)


def main() -> None:
    rng = random.Random(1234)
    out = Path(__file__).resolve().parent.parent / "fixtures" / "data"
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 320), ("validation", 80)):
        with open(out / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                label = rng.choice(["pos", "neg"])
                f.write(json.dumps({"text": sentence(rng, label), "label": label}) + "\n")


if __name__ == "__main__":
    main()
