"""ImageNet-LT, Places-LT and iNaturalist 2018: synthetic trees in their real layouts, and the real lists."""

import gzip
import shutil

import numpy as np
import pytest

from conftest import SPLITS
from datatrees import (
    imagenet_lt_tree,
    inat_tree,
    places_lt_rows,
    write_images,
    write_list,
    write_places_lists,
)
from tailtune.config import DataConfig, load_config, section
from tailtune.data.sources.base import build_data
from tailtune.data.sources.synthetic import SyntheticOptions
from tailtune.data.splits import path_mapper, read_list, sha256_of
from tailtune.errors import ConfigError, DataError


def _data(preset, **over):
    cfg = load_config(None, preset, overrides=[f"data.{k}={v}" for k, v in over.items()])
    return cfg.data


# ------------------------------------------------------------------ ImageNet-LT


def test_imagenet_lt_synthetic_tree(tmp_path):
    counts = [101, 20, 19] + [1] * 997  # many / medium / few boundaries: > 100, 20..100, < 20
    rows = imagenet_lt_tree(tmp_path, counts)
    data = build_data(_data("imagenet_lt", root=tmp_path, verify_images="false"))
    assert data.num_classes == 1000
    assert data.classnames[:3] == ["tench", "goldfish", "great white shark"]
    assert data.train_counts[:4].tolist() == [101, 20, 19, 1] and len(data.train) == 140 + 997
    assert [int((data.groups == g).sum()) for g in range(3)] == [1, 1, 998]
    assert len(data.val) == 1000 and data.val_source == "val split" and len(data.test) == 1000
    assert data.test.targets == [y for _, y in rows["test"]]
    assert data.train.paths[0] == str(tmp_path / "train/n00000000/n00000000_0.JPEG")


def test_imagenet_lt_without_val_list_notes_it(tmp_path):
    imagenet_lt_tree(tmp_path, [1] * 1000)
    (tmp_path / "ImageNet_LT_val.txt").unlink()
    data = build_data(_data("imagenet_lt", root=tmp_path, verify_images="false"))
    assert data.val is None and any("ImageNet_LT_val.txt not found" in n for n in data.notes)


def test_imagenet_lt_missing_list_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"ImageNet_LT_train.txt not found .*fetch-splits imagenet_lt"):
        build_data(_data("imagenet_lt", root=tmp_path))


def test_benchmarks_refuse_an_imbalance_ratio(tmp_path):
    with pytest.raises(ConfigError, match=r"long-tailed by its split lists; data.imb_ratio=100"):
        build_data(DataConfig(name="imagenet_lt", root=str(tmp_path)))


# ------------------------------------------------------------------ Places-LT

FOLDERS = ["airfield", "apartment_building-outdoor", "art_gallery", "bazaar-indoor"]


def test_places_lt_synthetic_tree(tmp_path):
    rows = places_lt_rows(FOLDERS, [120, 30, 5, 2])
    write_places_lists(tmp_path, rows)
    write_images(tmp_path, [p for r in rows.values() for p, _ in r])
    data = build_data(_data("places_lt", root=tmp_path))
    assert data.classnames == ["airfield", "apartment building outdoor", "art gallery", "bazaar indoor"]
    assert data.train_counts.tolist() == [120, 30, 5, 2]
    assert data.groups.tolist() == [0, 1, 2, 2]
    assert len(data.val) == 4 and len(data.test) == 8 and data.val_source == "val split"
    assert data.test.paths[0] == str(tmp_path / "val/airfield/Places365_val_00000.jpg")


def test_places_lt_takes_the_class_names_of_a_file(tmp_path):
    """data.classnames_file reproduces another code's prompts (e.g. the reference's hyphenated names)."""
    from tailtune.config import HeadConfig
    from tailtune.models.prompts import class_prompts

    rows = places_lt_rows(FOLDERS, [120, 30, 5, 2])
    write_places_lists(tmp_path, rows)
    write_images(tmp_path, [p for r in rows.values() for p, _ in r])
    names = tmp_path / "names.txt"
    # the second column of a two-column list, as `cut -d' ' -f2-` gives it: underscores and hyphens kept
    names.write_text("airfield\napartment_building-outdoor\nart_gallery\nbazaar-indoor\n")
    data = build_data(_data("places_lt", root=tmp_path, classnames_file=names))
    assert data.classnames == ["airfield", "apartment_building-outdoor", "art_gallery", "bazaar-indoor"]
    # the prompts: the reference's template.format(name.replace("_", " ")), by hand
    assert [p for (p,) in class_prompts(data.classnames, HeadConfig())] == [
        "a photo of a airfield.", "a photo of a apartment building-outdoor.", "a photo of a art gallery.",
        "a photo of a bazaar-indoor."]
    assert data.train_counts.tolist() == [120, 30, 5, 2] and data.groups.tolist() == [0, 1, 2, 2]
    assert data.test.targets == [y for _, y in rows["test"]]
    # art_gallery is spoken as tailtune's "art gallery": 2 of the 4 prompts differ
    assert any("2 of 4 prompts differ from places_lt's own names (e.g. class 1: 'apartment_building-outdoor', "
               "not 'apartment building outdoor')" in n for n in data.notes)

    names.write_text("airfield\nart gallery\nbazaar\n")
    with pytest.raises(DataError, match=r"names.txt has 3 names for 4 classes of places_lt; give exactly one"):
        build_data(_data("places_lt", root=tmp_path, classnames_file=names), check_files=False)
    # the reference's own file holds "folder name" lines: refused, with the command that takes the names
    names.write_text("airfield airfield\napartment_building-outdoor apartment_building-outdoor\n"
                     "art_gallery art_gallery\nbazaar-indoor bazaar-indoor\n")
    with pytest.raises(DataError, match=r"two columns, folder and name .*cut -d' ' -f2- .*names.txt"):
        build_data(_data("places_lt", root=tmp_path, classnames_file=names), check_files=False)
    with pytest.raises(DataError, match=r"class-names file .*nowhere.txt does not exist"):
        build_data(_data("places_lt", root=tmp_path, classnames_file=tmp_path / "nowhere.txt"), check_files=False)


def test_every_source_takes_the_class_names_of_a_file(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\n\ndog\nsea_lion\n")  # blank lines ignored
    data = build_data(section("data", name="synthetic", synthetic=SyntheticOptions(num_classes=3), classnames_file=str(names)))
    assert data.classnames == ["cat", "dog", "sea_lion"]
    names.write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")  # ImageNet-LT's
    with pytest.raises(DataError, match=r"two columns"):
        build_data(section("data", name="synthetic", synthetic=SyntheticOptions(num_classes=3), classnames_file=str(names)))


def test_places_lt_original_layout_by_path_map(tmp_path):
    """Lists in the easy format, files in Places365's original data_256/<letter>/... and val_256/."""
    rows = places_lt_rows(FOLDERS, [3, 2, 2, 1])
    write_places_lists(tmp_path / "lists", rows)
    mapped = path_mapper(["places365_original"])
    assert mapped("train/apartment_building-outdoor/00000001.jpg") == \
        "data_256/a/apartment_building/outdoor/00000001.jpg"
    assert mapped("val/airfield/Places365_val_00000.jpg") == "val_256/Places365_val_00000.jpg"
    write_images(tmp_path / "img", [mapped(p) for r in rows.values() for p, _ in r])
    data = build_data(_data("places_lt", root=tmp_path / "img", splits_dir=tmp_path / "lists",
                            path_map="[places365_original]"))
    assert data.train.paths[3] == str(tmp_path / "img/data_256/a/apartment_building/outdoor/00000000.jpg")
    assert data.classnames[1] == "apartment building outdoor"
    # the same lists without the map: every file is missing, counted per split, a few shown
    with pytest.raises(DataError, match=r"20 listed image files are missing \(train 8 of 8, val 4 of 4, "
                                        r"test 8 of 8\), e.g. .*train/airfield/00000000.jpg"):
        build_data(_data("places_lt", root=tmp_path / "img", splits_dir=tmp_path / "lists"))


def test_generic_prefix_map(tmp_path):
    rows = places_lt_rows(FOLDERS[:2], [2, 1])
    write_places_lists(tmp_path, rows)
    write_images(tmp_path / "photos", [p.replace("train/", "tr/", 1) for r in rows.values() for p, _ in r])
    data = build_data(_data("places_lt", root=tmp_path, path_map="[train/=photos/tr/,val/=photos/val/]"))
    assert data.train.paths[0] == str(tmp_path / "photos/tr/airfield/00000000.jpg")
    with pytest.raises(ConfigError, match="neither OLD=NEW nor a known layout"):
        path_mapper(["places_365"])


def test_label_out_of_range_and_empty_class_in_lists(tmp_path):
    rows = places_lt_rows(FOLDERS[:2], [2, 1])
    rows["test"].append(("val/airfield/x.jpg", 7))
    write_places_lists(tmp_path, rows)
    with pytest.raises(DataError, match=r"places_lt test list has label 7, out of range for 2 class names"):
        build_data(_data("places_lt", root=tmp_path), check_files=False)
    rows = places_lt_rows(FOLDERS[:3], [2, 0, 1])  # class 1 has no training image
    write_places_lists(tmp_path, rows)
    with pytest.raises(DataError, match=r"no image of labels \[1\]"):
        build_data(_data("places_lt", root=tmp_path), check_files=False)


def test_malformed_list_line_names_file_and_line(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg 0\nb.jpg zero\n")
    with pytest.raises(DataError, match=r"l.txt:2: expected 'relative/path label'"):
        read_list(tmp_path / "l.txt")


# ------------------------------------------------------------------ iNaturalist 2018


@pytest.mark.parametrize("as_json", [True, False])
def test_inat_species_and_taxonomy_levels(tmp_path, as_json):
    rows = inat_tree(tmp_path, [3, 2, 2, 1, 1], as_json=as_json)
    data = build_data(_data("inat2018", root=tmp_path))
    assert data.classnames == ["Corvus corax", "Corvus monedula", "Pica pica", "Quercus robur", "Bellis perennis"]
    assert data.train_counts.tolist() == [3, 2, 2, 1, 1] and len(data.test) == 5 and data.val is None
    assert data.groups.tolist() == [2] * 5
    assert data.train.paths[0] == str(tmp_path / rows["train"][0][0])
    genus = build_data(_data("inat2018", root=tmp_path, **{"inat2018.taxonomy": "genus"}))
    assert genus.classnames == ["Bellis", "Corvus", "Pica", "Quercus"]
    assert genus.train_counts.tolist() == [1, 5, 2, 1]
    assert genus.test.targets == [1, 1, 2, 3, 0]
    kingdom = build_data(_data("inat2018", root=tmp_path, **{"inat2018.taxonomy": "kingdom"}))
    assert kingdom.classnames == ["Animalia", "Plantae"] and kingdom.train_counts.tolist() == [7, 2]


def test_inat_json_without_taxonomy_says_where_it_is(tmp_path):
    inat_tree(tmp_path, [1, 1, 1, 1, 1])
    (tmp_path / "categories.json").unlink()
    species = build_data(_data("inat2018", root=tmp_path))  # species names are in the annotation files
    assert species.classnames[2] == "Pica pica"
    with pytest.raises(DataError, match=r"categories lack the 'genus' field.*categories.json"):
        build_data(_data("inat2018", root=tmp_path, **{"inat2018.taxonomy": "genus"}))


def test_inat_unknown_level_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.inat2018.taxonomy='species_group' is not valid; choose one of species"):
        load_config(None, "inat2018", overrides=["data.inat2018.taxonomy=species_group"])


# ------------------------------------------------------------------ the real lists (../shared/splits)

needs_splits = pytest.mark.skipif(not SPLITS.is_dir(), reason=f"{SPLITS} not present")


@needs_splits
def test_real_places_lt_lists(tmp_path):
    data = build_data(_data("places_lt", root=tmp_path, splits_dir=SPLITS), check_files=False)
    counts = data.train_counts
    assert len(data.train) == 62_500 and data.num_classes == 365
    assert counts.max() == 4980 and counts.min() == 5
    assert [int((data.groups == g).sum()) for g in range(3)] == [131, 163, 71]
    assert len(data.val) == 7_300 and len(data.test) == 36_500
    assert np.bincount(data.test.targets).tolist() == [100] * 365
    assert data.classnames[0] == "airfield"
    assert data.classnames[8] == "apartment building outdoor"


@needs_splits
def test_real_imagenet_lt_lists():
    for split, per_class in (("val", 20), ("test", 50)):
        _, labels = read_list(SPLITS / f"ImageNet_LT_{split}.txt.gz")
        assert np.bincount(labels).tolist() == [per_class] * 1000


@needs_splits
def test_real_inat_val_list_and_taxonomy():
    import json

    from tailtune.data.sources.inat import check_categories, taxonomy_labels

    _, labels = read_list(SPLITS / "iNaturalist18_val.txt.gz")
    assert len(labels) == 24_426 and len(set(labels)) == 8142
    cats = check_categories(json.loads(gzip.decompress((SPLITS / "categories.json.gz").read_bytes())), "categories")
    sizes = {level: len(taxonomy_labels(cats, level, "categories")[0])
             for level in ("species", "genus", "family", "order", "class", "phylum", "kingdom", "supercategory")}
    assert sizes == {"species": 8142, "genus": 4401, "family": 1118, "order": 272, "class": 57, "phylum": 25,
                     "kingdom": 6, "supercategory": 14}


@needs_splits
def test_real_list_checksums_match_the_readme(tmp_path):
    assert sha256_of(SPLITS / "Places_LT_val.txt.gz") == \
        "719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba"
    plain = tmp_path / "Places_LT_val.txt"
    with gzip.open(SPLITS / "Places_LT_val.txt.gz", "rb") as f, open(plain, "wb") as out:
        shutil.copyfileobj(f, out)
    assert sha256_of(plain) == "719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba"
    write_list(tmp_path / "other.txt", [("a.jpg", 0)])
    assert sha256_of(tmp_path / "other.txt") != sha256_of(plain)
