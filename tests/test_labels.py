import re

import pytest
from torchvision.models import ResNet18_Weights

from serve_app.labels import class_index_by_wnid, imagenet_labels

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`

CJK = re.compile(r"[\u4e00-\u9fff]")


def test_english_names_are_torchvisions_in_order():
    labels = imagenet_labels()
    assert [x.label for x in labels] == ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert [x.index for x in labels] == list(range(1000))


def test_every_class_has_a_chinese_name():
    names = [x.label_zh for x in imagenet_labels()]
    assert all(CJK.search(name) or name in {"iPod", "CD播放器"} for name in names)
    assert len(set(names)) == 1000


def test_known_chinese_names_sit_at_their_class():
    labels = imagenet_labels()
    assert (labels[0].label_zh, labels[1].label_zh, labels[970].label_zh) == ("丁鲷", "金鱼", "高山")
    assert (labels[388].label, labels[388].label_zh) == ("giant panda", "大熊猫")


def test_wordnet_ids_are_in_class_index_order():
    wnids = [x.wnid for x in imagenet_labels()]
    assert wnids == sorted(set(wnids)) and len(wnids) == 1000  # the index is the sorted-synset order
    assert class_index_by_wnid()["n01440764"] == 0 and class_index_by_wnid()["n02510455"] == 388


def test_shared_photos_name_their_class(shared_images):
    assert all(path.stem.split("_")[0] in class_index_by_wnid() for path in shared_images)
    tench = next(p for p in shared_images if p.stem.startswith("n01440764"))
    assert imagenet_labels()[class_index_by_wnid()["n01440764"]].label == tench.stem.split("_", 1)[1]
