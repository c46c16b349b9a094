"""Tiny synthetic dataset trees in the benchmarks' real layouts (a few small JPEGs per class)."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

_JPEG: dict[int, bytes] = {}


def jpeg_bytes(shade: int = 0) -> bytes:
    """A valid 8x8 JPEG (cached: writing bytes is much faster than encoding thousands of files)."""
    if shade not in _JPEG:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (shade % 256, 90, 160)).save(buf, "JPEG")
        _JPEG[shade] = buf.getvalue()
    return _JPEG[shade]


def write_images(root: Path, rel_paths, shade: int = 0) -> None:
    for rel in rel_paths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg_bytes(shade))


def write_list(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p} {y}\n" for p, y in rows))


def class_tree(root: Path, counts, prefix: str = "c", start: int = 0) -> list[str]:
    """root/<prefix><k>/<i>.jpg with counts[k] images; returns the class folder names."""
    names = [f"{prefix}{k}" for k in range(len(counts))]
    for k, n in enumerate(counts):
        write_images(root / names[k], [f"{start + i}.jpg" for i in range(n)], shade=k * 40)
    return names


def imagenet_lt_tree(root: Path, train_counts: list[int]) -> dict:
    """ILSVRC layout (train/nXXXXXXXX/nXXXXXXXX_i.JPEG, val/nXXXXXXXX/ILSVRC2012_val_*.JPEG) + the three lists.

    The val list draws from train/ (as ImageNet-LT's does), one image per class; the test
    list one ILSVRC val image per class.
    """
    train, val, test = [], [], []
    for c, n in enumerate(train_counts):
        wnid = f"n{c:08d}"
        train += [(f"train/{wnid}/{wnid}_{i}.JPEG", c) for i in range(n)]
        val.append((f"train/{wnid}/{wnid}_val.JPEG", c))
        test.append((f"val/{wnid}/ILSVRC2012_val_{c:08d}.JPEG", c))
    rows = {"train": train, "val": val, "test": test}
    for split, r in rows.items():
        write_images(root, [p for p, _ in r])
        write_list(root / f"ImageNet_LT_{split}.txt", r)
    return rows


def places_lt_rows(folders: list[str], train_counts: list[int]) -> dict:
    """Places-LT list rows in the easy format: train/<class>/..., val/<class>/Places365_val_*.jpg."""
    train, val, test = [], [], []
    for c, (f, n) in enumerate(zip(folders, train_counts)):
        train += [(f"train/{f}/{i:08d}.jpg", c) for i in range(n)]
        val.append((f"train/{f}/{n + 1:08d}.jpg", c))
        test += [(f"val/{f}/Places365_val_{c:04d}{i}.jpg", c) for i in range(2)]
    return {"train": train, "val": val, "test": test}


def write_places_lists(folder: Path, rows: dict) -> None:
    for split, r in rows.items():
        write_list(folder / f"Places_LT_{split}.txt", r)


# Five species, two kingdoms: enough to check species ids and sorted coarser levels.
INAT_CATEGORIES = [
    {"id": 0, "name": "Corvus corax", "genus": "Corvus", "family": "Corvidae", "order": "Passeriformes",
     "class": "Aves", "phylum": "Chordata", "kingdom": "Animalia", "supercategory": "Aves"},
    {"id": 1, "name": "Corvus monedula", "genus": "Corvus", "family": "Corvidae", "order": "Passeriformes",
     "class": "Aves", "phylum": "Chordata", "kingdom": "Animalia", "supercategory": "Aves"},
    {"id": 2, "name": "Pica pica", "genus": "Pica", "family": "Corvidae", "order": "Passeriformes",
     "class": "Aves", "phylum": "Chordata", "kingdom": "Animalia", "supercategory": "Aves"},
    {"id": 3, "name": "Quercus robur", "genus": "Quercus", "family": "Fagaceae", "order": "Fagales",
     "class": "Magnoliopsida", "phylum": "Tracheophyta", "kingdom": "Plantae", "supercategory": "Plantae"},
    {"id": 4, "name": "Bellis perennis", "genus": "Bellis", "family": "Asteraceae", "order": "Asterales",
     "class": "Magnoliopsida", "phylum": "Tracheophyta", "kingdom": "Plantae", "supercategory": "Plantae"},
]


def inat_tree(root: Path, train_counts: list[int], as_json: bool = True) -> dict:
    """train_val2018/<supercategory>/<id>/<hash>.jpg images + train2018/val2018.json (or the txt lists)."""
    rows = {"train": [], "test": []}
    for c, n in enumerate(train_counts):
        sup = INAT_CATEGORIES[c]["supercategory"]
        rows["train"] += [(f"train_val2018/{sup}/{c}/t{c}x{i}.jpg", c) for i in range(n)]
        rows["test"].append((f"train_val2018/{sup}/{c}/v{c}.jpg", c))
    for r in rows.values():
        write_images(root, [p for p, _ in r])
    if as_json:
        for split, name in (("train", "train2018.json"), ("test", "val2018.json")):
            images = [{"id": 100 + i, "file_name": p} for i, (p, _) in enumerate(rows[split])]
            anns = [{"id": i, "image_id": 100 + i, "category_id": y} for i, (_, y) in enumerate(rows[split])]
            cats = [{"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]} for c in INAT_CATEGORIES]
            (root / name).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    else:
        write_list(root / "iNaturalist18_train.txt", rows["train"])
        write_list(root / "iNaturalist18_val.txt", rows["test"])
    (root / "categories.json").write_text(json.dumps(INAT_CATEGORIES))
    return rows


def fake_cifar100(root, per_class=500, test_per_class=2):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        labels = list(np.tile(np.arange(100), n))
        data = rng.integers(0, 255, (len(labels), 3072), dtype=np.uint8)
        pickle.dump({"data": data, "fine_labels": labels}, open(folder / split, "wb"))
    names = [f"class_{i}" for i in range(100)]
    pickle.dump({"fine_label_names": names}, open(folder / "meta", "wb"))
