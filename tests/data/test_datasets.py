"""Dataset loaders on tiny on-disk trees: layouts, pairing by name, label mapping, bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transkd.data import build_dataset, list_datasets
from transkd.data.datasets import LabelMap, dataset_class
from transkd.data.datasets.cityscapes import CITYSCAPES_LABELS, label_id_table
from transkd.errors import ConfigError, DatasetError

H, W = 32, 64


def write_image(path: Path, value: int, size=(H, W)) -> None:
    """An RGB image whose red channel is ``value`` everywhere (identifies the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((*size, 3), np.uint8)
    arr[..., 0] = value
    arr[..., 1] = np.arange(size[1], dtype=np.uint8)[None, :]
    Image.fromarray(arr).save(path)


def write_label(path: Path, values, size=(H, W), mode: str = "L") -> np.ndarray:
    """A label whose rows cycle through ``values``; returns the raw array written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values, np.uint8)
    arr = np.resize(values, size[0])[:, None].repeat(size[1], 1).astype(np.uint8)
    if mode == "P":
        img = Image.fromarray(arr, mode="L").convert("P")
        img.putpalette([c for i in range(256) for c in ((i * 37) % 256, (i * 91) % 256, i)])
        img.putdata(arr.ravel().tolist())
    else:
        img = Image.fromarray(arr)
    img.save(path)
    return arr


def make_camvid(root: Path, names=("b_002", "a_001", "c_003"), split="train") -> dict[str, int]:
    """Tiny SegNet-layout tree; files created in a shuffled order. Returns name → image value."""
    values = {}
    for i, name in enumerate(names):
        value = 40 + 50 * i
        values[name] = value
        write_label(root / f"{split}annot" / f"{name}.png", [i, 3, 11])
        write_image(root / split / f"{name}.png", value)
    return values


# ----------------------------------------------------------------------------------- registry

def test_registry_lists_every_dataset():
    assert list_datasets() == ["acdc", "ade20k", "camvid", "cityscapes", "coco_stuff", "folder", "nyuv2",
                               "synthetic", "voc"]
    for name in list_datasets():
        cls = dataset_class(name)
        if name != "folder":
            assert len(cls.class_names) == len(cls.palette) > 0
            assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in cls.palette)
    assert len(dataset_class("cityscapes").class_names) == 19
    assert len(dataset_class("acdc").class_names) == 19
    assert len(dataset_class("nyuv2").class_names) == 40
    assert len(dataset_class("voc").class_names) == 21
    assert len(dataset_class("camvid").class_names) == 11
    assert len(dataset_class("ade20k").class_names) == 150
    assert len(dataset_class("coco_stuff").class_names) == 171


def test_registry_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'kitti'.*camvid"):
        build_dataset("kitti", tmp_path)
    make_camvid(tmp_path)
    with pytest.raises(ConfigError, match="unknown option.*'camvid'"):
        build_dataset("camvid", tmp_path, colour=True)
    with pytest.raises(DatasetError, match="needs a root folder"):
        build_dataset("camvid", None)
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("camvid", tmp_path / "nowhere")


def test_label_map_describes_and_rejects_values(tmp_path):
    lut = LabelMap.identity(11, void_values=(11, 255))
    assert lut.describe_valid() == "0..11, 255"
    raw = np.array([[0, 10, 11, 255]], np.uint8)
    assert lut.apply(raw, tmp_path / "x.png").tolist() == [[0, 10, 255, 255]]
    with pytest.raises(DatasetError, match=r"x\.png holds value\(s\) 12, 200"):
        lut.apply(np.array([[12, 200, 3]], np.uint8), tmp_path / "x.png")


# ------------------------------------------------------------------------------------ ADE20K

def make_ade20k(root: Path, folder: str = "validation", names=("ADE_val_00000002", "ADE_val_00000001")):
    """ADEChallengeData2016 layout: jpg images, png labels with 0 = other and 1..150."""
    raw = {}
    for i, name in enumerate(names):
        write_image(root / "images" / folder / f"{name}.jpg", 60 + 100 * i)
        raw[name] = write_label(root / "annotations" / folder / f"{name}.png", [0, 1, 150, 7 + i])
    return raw


def test_ade20k_shifts_classes_by_one_and_ignores_other(tmp_path):
    raw = make_ade20k(tmp_path)
    make_ade20k(tmp_path, "training", names=("ADE_train_00000001",))
    ds = build_dataset("ade20k", tmp_path, split="val")
    assert (ds.name, len(ds), ds.num_classes) == ("ade20k", 2, 150)
    assert ds.class_names[0] == "wall" and ds.class_names[-1] == "flag"
    assert ds.names == ["ADE_val_00000001", "ADE_val_00000002"]
    for sample in ds:
        stored = raw[sample.name].astype(np.int64)
        expected = np.where(stored == 0, 255, stored - 1)  # 0 → ignore, k → k - 1
        assert np.array_equal(sample.label, expected)
        written = 60 + 100 * list(raw).index(sample.name)  # the image of that name (jpg: lossy)
        assert abs(int(sample.image[0, 0, 0]) - written) <= 4
    assert ds.validate(strict=True) == 2
    assert len(build_dataset("ade20k", tmp_path, split="train")) == 1
    assert len(build_dataset("ade20k", tmp_path, split="training")) == 1
    counts = ds.class_pixel_counts()
    assert counts.shape == (150,) and counts[149] > 0 and counts[0] > 0


def test_ade20k_errors_name_the_folder_and_value(tmp_path):
    make_ade20k(tmp_path)
    with pytest.raises(DatasetError, match="ADE20K split 'train' not found.*ADEChallengeData2016"):
        build_dataset("ade20k", tmp_path, split="train")
    write_label(tmp_path / "annotations" / "validation" / "ADE_val_00000001.png", [151])
    with pytest.raises(DatasetError, match=r"ADE_val_00000001\.png holds value\(s\) 151"):
        build_dataset("ade20k", tmp_path, split="val")[0]


# ------------------------------------------------------------------------------------ CamVid

def test_camvid_pairs_by_name_and_maps_void(tmp_path):
    values = make_camvid(tmp_path)
    ds = build_dataset("camvid", tmp_path, split="train")
    assert (ds.name, ds.split, len(ds), ds.num_classes, ds.ignore_index) == ("camvid", "train", 3, 11, 255)
    assert ds.names == ["a_001", "b_002", "c_003"]
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
        assert sample.label.shape == (H, W) and sample.label.dtype == np.uint8
        assert sample.image[0, 0, 0] == values[sample.name]          # the image of that name
        position = list(values).index(sample.name)
        assert sample.label[0, 0] == position                         # the label of that name
        assert set(np.unique(sample.label)) == {position, 3, 255}     # 11 (unlabelled) → 255
    assert ds.validate() == 3 and ds.validate(strict=True) == 3
    counts = ds.class_pixel_counts()
    void_rows = len(range(2, H, 3))                                   # rows cycle [i, 3, 11]
    assert counts.shape == (11,) and counts.sum() == 3 * (H - void_rows) * W
    assert counts[3] == 3 * len(range(1, H, 3)) * W
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[1].label, ds[1].label)


def test_camvid_split_errors(tmp_path):
    make_camvid(tmp_path)
    with pytest.raises(DatasetError, match="unknown split 'training'"):
        build_dataset("camvid", tmp_path, split="training")
    with pytest.raises(DatasetError, match="split 'val' not found.*val"):
        build_dataset("camvid", tmp_path, split="val")
    (tmp_path / "test").mkdir()
    (tmp_path / "testannot").mkdir()
    with pytest.raises(DatasetError, match="split 'test' of camvid.*holds no images"):
        build_dataset("camvid", tmp_path, split="test")


def test_image_without_label_and_label_without_image(tmp_path):
    make_camvid(tmp_path)
    write_image(tmp_path / "train" / "d_004.png", 7)
    with pytest.raises(DatasetError, match=r"image .*d_004\.png has no label .*trainannot.d_004\.png"):
        build_dataset("camvid", tmp_path)
    (tmp_path / "train" / "d_004.png").unlink()
    write_label(tmp_path / "trainannot" / "e_005.png", [1])
    with pytest.raises(DatasetError, match=r"label .*e_005\.png has no image"):
        build_dataset("camvid", tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_image_names_the_file(tmp_path, damage):
    make_camvid(tmp_path)
    path = tmp_path / "train" / "b_002.png"
    if damage == "truncate":
        big = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(big).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"this is not a png")
    ds = build_dataset("camvid", tmp_path)
    index = ds.names.index("b_002")
    with pytest.raises(DatasetError, match=r"cannot read image .*b_002\.png"):
        ds[index]
    with pytest.raises(DatasetError, match=r"b_002\.png"):
        ds.validate(strict=True)
    ds[0]  # the other files still load


def test_size_mismatch(tmp_path):
    make_camvid(tmp_path)
    write_label(tmp_path / "trainannot" / "a_001.png", [1], size=(H, W // 2))
    ds = build_dataset("camvid", tmp_path)
    message = r"label .*a_001\.png is 32x32 but its image .*a_001\.png is 64x32"
    with pytest.raises(DatasetError, match=message):
        ds[ds.names.index("a_001")]
    with pytest.raises(DatasetError, match="a_001"):
        ds.validate()


def test_label_values_out_of_range(tmp_path):
    make_camvid(tmp_path)
    write_label(tmp_path / "trainannot" / "c_003.png", [2, 12, 40])
    ds = build_dataset("camvid", tmp_path)
    ds.validate()  # headers are fine
    with pytest.raises(DatasetError, match=r"c_003\.png holds value\(s\) 12, 40 outside .*0\.\.11, 255"):
        ds.validate(strict=True)


def test_rgb_and_16_bit_labels_are_rejected(tmp_path):
    make_camvid(tmp_path)
    write_image(tmp_path / "trainannot" / "a_001.png", 1)
    ds = build_dataset("camvid", tmp_path)
    with pytest.raises(DatasetError, match=r"a_001\.png is a colour image \(mode 'RGB'\)"):
        ds.validate()
    with pytest.raises(DatasetError, match="colour image"):
        ds[ds.names.index("a_001")]
    Image.fromarray(np.full((H, W), 3, np.uint16)).save(tmp_path / "trainannot" / "a_001.png")
    with pytest.raises(DatasetError, match=r"a_001\.png is a 16-bit"):
        build_dataset("camvid", tmp_path).validate()


def test_palette_label_gives_indices_not_colours(tmp_path):
    make_camvid(tmp_path)
    write_label(tmp_path / "trainannot" / "a_001.png", [5, 7], mode="P")
    ds = build_dataset("camvid", tmp_path)
    label = ds[ds.names.index("a_001")].label
    assert set(np.unique(label)) == {5, 7}
    ds.validate(strict=True)


# -------------------------------------------------------------------------------- Cityscapes

def make_cityscapes(root: Path, kind: str = "labelTrainIds") -> None:
    frames = [("zurich", "zurich_000001_000019"), ("aachen", "aachen_000002_000019"),
              ("aachen", "aachen_000000_000019")]
    for i, (city, stem) in enumerate(frames):
        raw = [7, 26, 0, 255] if kind == "labelIds" else [0, 13, 255, i]
        write_label(root / "gtFine" / "val" / city / f"{stem}_gtFine_{kind}.png", raw)
        write_image(root / "gtFine" / "val" / city / f"{stem}_gtFine_color.png", 9)  # ignored
        write_image(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", 100 + i)


def test_cityscapes_label_table():
    table = label_id_table()
    assert len(CITYSCAPES_LABELS) == 35 and len(table) == 35
    assert table[7] == 0 and table[8] == 1 and table[26] == 13 and table[33] == 18
    assert table[0] == table[9] == table[29] == table[255] == 255   # unlabeled, parking, caravan, plate
    assert sorted(v for v in table.values() if v != 255) == list(range(19))


def test_cityscapes_train_ids(tmp_path):
    make_cityscapes(tmp_path)
    ds = build_dataset("cityscapes", tmp_path, split="val")
    assert ds.num_classes == 19 and len(ds) == 3
    assert ds.names == ["aachen_000000_000019_leftImg8bit", "aachen_000002_000019_leftImg8bit",
                        "zurich_000001_000019_leftImg8bit"]
    assert ds[2].image[0, 0, 0] == 100 and set(np.unique(ds[2].label)) == {0, 13, 255}
    assert ds.validate(strict=True) == 3


def test_cityscapes_converts_label_ids(tmp_path):
    make_cityscapes(tmp_path, "labelIds")
    ds = build_dataset("cityscapes", tmp_path, split="val")
    assert ds[0].label[:4, 0].tolist() == [0, 13, 255, 255]
    with pytest.raises(DatasetError, match=r"has no label .*_gtFine_labelTrainIds\.png"):
        build_dataset("cityscapes", tmp_path, split="val", label_source="trainids")
    with pytest.raises(ConfigError, match="label_source"):
        build_dataset("cityscapes", tmp_path, split="val", label_source="colour")


def test_cityscapes_missing_split(tmp_path):
    make_cityscapes(tmp_path)
    with pytest.raises(DatasetError, match=r"split 'train' not found.*available: val"):
        build_dataset("cityscapes", tmp_path, split="train")


# -------------------------------------------------------------------------------------- ACDC

def make_acdc(root: Path) -> None:
    for c, cond in enumerate(("fog", "night", "rain", "snow")):
        for j in range(2):
            stem = f"GP{c}{j}_frame_00000{j}"
            write_image(root / "rgb_anon" / cond / "val" / f"GP{c}{j}" / f"{stem}_rgb_anon.png", 10 * c + j)
            write_label(root / "gt" / cond / "val" / f"GP{c}{j}" / f"{stem}_gt_labelTrainIds.png", [c, 255])
        write_image(root / "rgb_anon" / cond / "val_ref" / "GPX" / "GPX_frame_000000_rgb_ref_anon.png", 1)


def test_acdc_pools_and_filters_conditions(tmp_path):
    make_acdc(tmp_path)
    pooled = build_dataset("acdc", tmp_path, split="val")
    assert len(pooled) == 8 and pooled.num_classes == 19
    assert pooled.sample_conditions == ("fog",) * 2 + ("night",) * 2 + ("rain",) * 2 + ("snow",) * 2
    for i in range(len(pooled)):
        sample = pooled[i]
        condition = ("fog", "night", "rain", "snow").index(pooled.sample_conditions[i])
        assert sample.image[0, 0, 0] // 10 == condition and sample.label[0, 0] == condition
    night = build_dataset("acdc", tmp_path, split="val", conditions=["night"])
    assert len(night) == 2 and night.conditions == ("night",)
    with pytest.raises(ConfigError, match="conditions"):
        build_dataset("acdc", tmp_path, split="val", conditions=("haze",))
    with pytest.raises(DatasetError, match="split 'train' not found"):
        build_dataset("acdc", tmp_path, split="train")


# ------------------------------------------------------------------------------------- NYUv2

def make_nyuv2(root: Path) -> None:
    for i, name in enumerate(["0003", "0001", "0002"]):
        suffix = ".jpg" if name == "0002" else ".png"
        write_image(root / "images" / f"{name}{suffix}", 20 * i)
        write_label(root / "labels40" / f"{name}.png", [0, 1, 40])
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("0001\n0003.png\n")
    (root / "splits" / "test.txt").write_text("0002\n")


def test_nyuv2_layout_and_label_shift(tmp_path):
    make_nyuv2(tmp_path)
    train = build_dataset("nyuv2", tmp_path, split="train")
    assert train.num_classes == 40 and train.names == ["0001", "0003"]
    assert train[0].label[:3, 0].tolist() == [255, 0, 39]
    val = build_dataset("nyuv2", tmp_path, split="val")
    assert val.names == ["0002"] and len(build_dataset("nyuv2", tmp_path, split="test")) == 1
    (tmp_path / "splits" / "test.txt").write_text("0002\n0009\n")
    with pytest.raises(DatasetError, match=r"listed name '0009' has no image"):
        build_dataset("nyuv2", tmp_path, split="test")
    (tmp_path / "splits" / "train.txt").unlink()
    with pytest.raises(DatasetError, match=r"split list .*train\.txt does not exist"):
        build_dataset("nyuv2", tmp_path, split="train")


# --------------------------------------------------------------------------------------- VOC

def make_voc(root: Path) -> None:
    for i, name in enumerate(["2007_000033", "2007_000032", "2008_000001"]):
        write_image(root / "JPEGImages" / f"{name}.jpg", 30 * i)
        write_label(root / "SegmentationClass" / f"{name}.png", [0, 15, 255], mode="P")
        write_label(root / "SegmentationClassAug" / f"{name}.png", [0, 20])
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n2007_000033\n")
    (sets / "val.txt").write_text("2008_000001\n")
    (sets / "train_aug.txt").write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
                                        "/JPEGImages/2008_000001.jpg /SegmentationClassAug/2008_000001.png\n")


def test_voc_palette_labels_and_trainaug(tmp_path):
    make_voc(tmp_path)
    train = build_dataset("voc", tmp_path, split="train")
    assert train.num_classes == 21 and train.names == ["2007_000032", "2007_000033"]
    assert train[0].label[:3, 0].tolist() == [0, 15, 255]
    aug = build_dataset("voc", tmp_path, split="trainaug")
    assert aug.names == ["2007_000032", "2008_000001"] and aug[1].label[:2, 0].tolist() == [0, 20]
    assert aug.validate(strict=True) == 2
    (tmp_path / "SegmentationClass" / "2008_000001.png").unlink()
    with pytest.raises(DatasetError, match=r"image .*2008_000001\.jpg has no label"):
        build_dataset("voc", tmp_path, split="val")


# ------------------------------------------------------------------------------------ Folder

def write_classes(root: Path, fmt: str = "yaml", **extra) -> None:
    spec = {"names": ["background", "road", "car"], "colors": [[0, 0, 0], [128, 64, 128], [0, 0, 142]],
            **extra}
    if fmt == "json":
        (root / "classes.json").write_text(json.dumps(spec))
    else:
        import yaml
        (root / "classes.yaml").write_text(yaml.safe_dump(spec))


def test_folder_split_subfolders(tmp_path):
    write_classes(tmp_path)
    for split, names in (("train", ["x", "y"]), ("val", ["z"])):
        for name in names:
            write_image(tmp_path / "images" / split / f"{name}.jpg", 5)
            write_label(tmp_path / "masks" / split / f"{name}.png", [0, 2, 255])
    ds = build_dataset("folder", tmp_path, split="train")
    assert ds.class_names == ("background", "road", "car") and ds.palette[2] == (0, 0, 142)
    assert ds.names == ["x", "y"] and ds[0].label[:3, 0].tolist() == [0, 2, 255]
    assert len(build_dataset("folder", tmp_path, split="val")) == 1
    with pytest.raises(DatasetError, match="split 'test' not found.*split='all'"):
        build_dataset("folder", tmp_path, split="test")


def test_folder_lists_json_and_custom_ignore(tmp_path):
    write_classes(tmp_path, "json", ignore_index=9)
    for name in ("a", "b", "c"):
        write_image(tmp_path / "images" / f"{name}.png", 5)
        write_label(tmp_path / "masks" / f"{name}.png", [1, 9])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("c\na\n")
    ds = build_dataset("folder", tmp_path, split="train")
    assert ds.names == ["c", "a"] and ds.ignore_index == 255
    assert ds[0].label[:2, 0].tolist() == [1, 255]
    assert len(build_dataset("folder", tmp_path, split="all")) == 3
    write_label(tmp_path / "masks" / "a.png", [1, 255])
    with pytest.raises(DatasetError, match=r"a\.png holds value\(s\) 255"):
        ds.validate(strict=True)


def test_folder_colour_masks(tmp_path):
    write_classes(tmp_path, mask_format="color", ignore_color=[255, 255, 255])
    write_image(tmp_path / "images" / "a.png", 5)
    mask = np.zeros((H, W, 3), np.uint8)
    mask[:8] = (128, 64, 128)
    mask[8:16] = (0, 0, 142)
    mask[16:24] = (255, 255, 255)
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    ds = build_dataset("folder", tmp_path, split="all")
    label = ds[0].label
    assert label[0, 0] == 1 and label[8, 0] == 2 and label[16, 0] == 255 and label[30, 0] == 0
    assert ds.validate() == 1
    mask[31, 5] = (1, 2, 3)
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png holds colour \(1, 2, 3\)"):
        ds[0]


@pytest.mark.parametrize("spec, message", [
    ({"names": []}, "'names'"),
    ({"names": ["a", "a"]}, "twice"),
    ({"names": ["a"], "colours": [[0, 0, 0]]}, "unknown key.*colours"),
    ({"names": ["a", "b"], "colors": [[0, 0, 0]]}, "one RGB triple per class"),
    ({"names": ["a", "b"], "colors": [[0, 0, 0], [0, 0, 300]]}, "RGB triple"),
    ({"names": ["a", "b"], "ignore_index": 1}, "'ignore_index'"),
    ({"names": ["a"], "mask_format": "rgb"}, "'mask_format'"),
])
def test_folder_bad_classes_file(tmp_path, spec, message):
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ConfigError, match=message):
        build_dataset("folder", tmp_path, split="all")


def test_folder_missing_classes_file_and_masks(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="no classes file"):
        build_dataset("folder", tmp_path, split="all")
    write_classes(tmp_path)
    with pytest.raises(DatasetError, match=r"mask folder .*masks does not exist"):
        build_dataset("folder", tmp_path, split="all")
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        build_dataset("folder", tmp_path, split="all")


# ----------------------------------------------------------------------------- base contract

def test_validate_checks_the_sample_contract_of_any_dataset():
    from transkd.data import Sample, SegmentationDataset

    class TwoClasses(SegmentationDataset):
        name = "two"
        class_names = ("a", "b")
        palette = ((0, 0, 0), (255, 255, 255))

        def __init__(self, value):
            super().__init__("train")
            self.value = value

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return Sample(np.zeros((4, 4, 3), np.uint8), np.full((4, 4), self.value, np.uint8), f"s{index}")

    assert TwoClasses(1).validate() == 2 and TwoClasses(255).validate() == 2
    assert TwoClasses(1).class_pixel_counts().tolist() == [0, 32]
    with pytest.raises(DatasetError, match="sample 's0' of two: label value 2"):
        TwoClasses(2).validate()


# ------------------------------------------------------------------------------- COCO-Stuff

def test_coco_stuff_maps_coco_ids_to_171_train_ids(tmp_path):
    # stuffthingmaps store COCO id - 1: person (id 1) = 0, stop sign (id 13) = 12, stuff
    # 'banner' (id 92) = 91, 'wood' (id 182) = 181, hat (id 26, never annotated) = 25, 255.
    write_image(tmp_path / "images" / "val2017" / "000000000139.jpg", 90)
    write_label(tmp_path / "annotations" / "val2017" / "000000000139.png", [0, 12, 91, 181, 25, 255])
    write_image(tmp_path / "images" / "val2017" / "000000000285.jpg", 90)
    write_label(tmp_path / "annotations" / "val2017" / "000000000285.png", [3])
    write_label(tmp_path / "annotations" / "val2017" / "000000000285_labelTrainIds.png", [170])
    unused = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}
    used = [i for i in range(1, 183) if i not in unused]  # class k is the k-th used COCO id
    assert len(used) == 171
    expected = {0: used.index(1), 12: used.index(13), 91: used.index(92), 181: used.index(182),
                25: 255, 255: 255}
    assert (expected[12], expected[91], expected[181]) == (11, 80, 170)

    raw = build_dataset("coco_stuff", tmp_path, split="val", label_source="stuffthingmaps")
    assert (raw.num_classes, raw.names) == (171, ["000000000139", "000000000285"])
    assert raw.class_names[0] == "person" and raw.class_names[80] == "banner"
    assert raw.class_names[-1] == "wood"
    sample = raw[0]
    assert [int(v) for v in sample.label[:6, 0]] == [expected[v] for v in (0, 12, 91, 181, 25, 255)]
    assert int(raw[1].label[0, 0]) == 3  # car (id 4) → 3
    auto = build_dataset("coco_stuff", tmp_path, split="val")
    assert int(auto[1].label[0, 0]) == 170 and int(auto[0].label[1, 0]) == 11  # converted where present
    with pytest.raises(DatasetError, match="000000000139"):  # trainids only: a label is missing
        build_dataset("coco_stuff", tmp_path, split="val", label_source="trainids")
    with pytest.raises(ConfigError, match="label_source must be one of auto, stuffthingmaps, trainids"):
        build_dataset("coco_stuff", tmp_path, split="val", label_source="ids")
