"""The 1000 ImageNet-1K classes from one file: English name (as torchvision has it), Chinese name,
and WordNet id (the `n01440764` synsets that ImageNet file and folder names carry)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

LABELS_FILE = "imagenet1k_labels.tsv"


@dataclass(frozen=True)
class Label:
    index: int
    label: str
    label_zh: str
    wnid: str


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[Label, ...]:
    text = resources.files("serve_app.data").joinpath(LABELS_FILE).read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    labels = tuple(Label(int(row["index"]), row["label"], row["label_zh"], row["wnid"]) for row in rows)
    if [label.index for label in labels] != list(range(1000)):
        raise RuntimeError(f"{LABELS_FILE} must list classes 0..999 in order")
    return labels


@lru_cache(maxsize=1)
def class_index_by_wnid() -> dict[str, int]:
    return {label.wnid: label.index for label in imagenet_labels()}
