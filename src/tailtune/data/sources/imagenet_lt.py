"""The ``imagenet_lt`` source: ILSVRC-2012 images + the ImageNet-LT split lists."""

from __future__ import annotations

from tailtune.config import DataConfig
from tailtune.data.sources.base import SOURCES, reads
from tailtune.data.sources.benchmark import check_fixed_tail, list_data, read_splits, require_root

LISTS = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}


def imagenet_classnames() -> list[str]:
    """The 1000 CLIP-curated ImageNet class names, in label order (open_clip ships them)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


@SOURCES.register("imagenet_lt")
@reads("root", "splits_dir", "path_map", "group_imb_ratio")  # group_imb_ratio: to refuse it
def imagenet_lt(cfg: DataConfig):
    """ImageNet-LT: 115,846 training images over 1000 classes (1280 to 5), val 20 / class, test 50 / class.

    ``data.root`` holds ILSVRC-2012's train/ and val/ folders (class sub-folders); the
    lists ImageNet_LT_{train,val,test}.txt (or .txt.gz) lie in ``data.splits_dir``
    (default: the root). Without the val list the run has no val split (a note says so).
    """
    check_fixed_tail(cfg)
    root = require_root(cfg, "the ImageNet (ILSVRC-2012) images: train/nXXXXXXXX/*.JPEG and val/nXXXXXXXX/*.JPEG")
    splits, notes = read_splits(cfg, LISTS)
    return list_data(cfg, root, splits, imagenet_classnames(), notes)
