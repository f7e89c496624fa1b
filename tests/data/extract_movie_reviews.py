"""Rebuild movie_review_sentences.csv from the vaderSentiment 3.3.2 source package (MIT).

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vader
    python tests/data/extract_movie_reviews.py /tmp/vader/vaderSentiment-3.3.2.tar.gz

The package ships `additional_resources/hutto_ICWSM_2014.tar.gz` with
`movieReviewSnippets_GroundTruth.txt`: 10,605 Rotten Tomatoes review sentences (Pang & Lee),
each with the mean of 20 human sentiment ratings on -4..4 (Hutto & Gilbert, ICWSM 2014).
SST-2's rule is kept: sentences near neutral are dropped (SST's 0.4-0.6 band is |mean| <= 0.8
on this scale), the rest are labelled by sign; 200 of each label are drawn with a fixed seed.
A second, disjoint draw (movie_review_sentences_holdout.csv) confirms the method chosen on
the first one without having been looked at while choosing.
"""

from __future__ import annotations

import csv
import io
import random
import sys
import tarfile
from pathlib import Path

MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
NEUTRAL_BAND = 0.8
PER_LABEL = 200
SEED = 20
OUTPUT = Path(__file__).with_name("movie_review_sentences.csv")
HOLDOUT = Path(__file__).with_name("movie_review_sentences_holdout.csv")


def snippets(sdist: Path) -> list[tuple[float, str]]:
    with tarfile.open(sdist) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(inner_member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile(MEMBER).read().decode("utf-8")
    rows = []
    for line in text.splitlines():
        _, rating, sentence = line.split("\t", 2)
        rows.append((float(rating), " ".join(sentence.split())))
    return rows


def draw(positive: list[str], negative: list[str], seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    chosen = [(s, "positive") for s in rng.sample(positive, PER_LABEL)]
    chosen += [(s, "negative") for s in rng.sample(negative, PER_LABEL)]
    rng.shuffle(chosen)
    return chosen


def write(rows: list[tuple[str, str]], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main(sdist: str) -> None:
    rows = snippets(Path(sdist))
    positive = sorted(s for r, s in rows if r > NEUTRAL_BAND)
    negative = sorted(s for r, s in rows if r < -NEUTRAL_BAND)
    chosen = draw(positive, negative, SEED)
    write(chosen, OUTPUT)
    used = {s for s, _ in chosen}
    holdout = draw([s for s in positive if s not in used], [s for s in negative if s not in used],
                   SEED + 1)
    write(holdout, HOLDOUT)
    print(f"{len(positive)} positive, {len(negative)} negative of {len(rows)}; "
          f"wrote {OUTPUT.name} and {HOLDOUT.name}")


if __name__ == "__main__":
    main(sys.argv[1])
