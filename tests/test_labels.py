import re

from torchvision.models import ResNet18_Weights

from serve_app.labels import imagenet_labels

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
