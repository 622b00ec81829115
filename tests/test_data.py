"""data.py: reading and validating MMRec dataset folders (tiny hand-made files + real TikTok)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mmrec_rearm.data import (
    TrainingData,
    read_dataset,
    read_interactions,
    training_data_from_arrays,
    training_matrix,
    validate_features,
)
from mmrec_rearm.errors import DatasetError

REPO_ROOT = Path(__file__).resolve().parents[1]
TIKTOK = REPO_ROOT.parent / "shared" / "data" / "tiktok"

HEADER = "userID\titemID\trating\ttimestamp\tx_label"
# user, item, rating, timestamp, x_label; (0, 1) appears twice in training
ROWS = [
    (0, 1, 5, 100, 0),
    (0, 2, 4, 101, 0),
    (0, 1, 3, 102, 0),
    (1, 0, 5, 103, 0),
    (1, 1, 2, 104, 1),
    (2, 3, 1, 105, 2),
    (2, 2, 1, 106, 0),
]
EXPECTED_TRAIN = np.array(
    [[0, 1, 1, 0],
     [1, 0, 0, 0],
     [0, 0, 1, 0]], dtype=np.float32)


def write_inter(folder: Path, rows=ROWS, header: str = HEADER, name: str | None = None,
                newline: str = "\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{folder.name}.inter")
    lines = [header] + ["\t".join(str(v) for v in r) for r in rows]
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


def make_folder(tmp_path: Path, image=True, text=True, n_items: int = 4) -> Path:
    folder = tmp_path / "toy"
    write_inter(folder)
    if image:
        np.save(folder / "image_feat.npy", np.arange(n_items * 3, dtype=np.float64).reshape(n_items, 3))
    if text:
        np.save(folder / "text_feat.npy", np.arange(n_items * 2, dtype=np.int64).reshape(n_items, 2))
    return folder


# --- happy paths -----------------------------------------------------------------------------

def test_read_dataset_exact_content(tmp_path):
    folder = make_folder(tmp_path)
    data = read_dataset(folder)
    assert isinstance(data, TrainingData)
    assert (data.n_users, data.n_items) == (3, 4)  # item 3 only in the test split still counts
    assert sp.isspmatrix_csr(data.interactions)
    assert data.interactions.dtype == np.float32
    np.testing.assert_array_equal(data.interactions.toarray(), EXPECTED_TRAIN)  # duplicate merged to 1
    assert data.n_train == 4
    assert data.modalities == ("image", "text")
    img, txt = data.features["image"], data.features["text"]
    assert img.dtype == np.float32 and img.flags.c_contiguous and img.shape == (4, 3)
    assert txt.dtype == np.float32 and txt.flags.c_contiguous and txt.shape == (4, 2)
    np.testing.assert_array_equal(img, np.arange(12, dtype=np.float32).reshape(4, 3))
    np.testing.assert_array_equal(txt, np.arange(8, dtype=np.float32).reshape(4, 2))
    assert data.source == {
        "inter": str(folder / "toy.inter"),
        "image": str(folder / "image_feat.npy"),
        "text": str(folder / "text_feat.npy"),
    }
    assert data.summary() == {"n_users": 3, "n_items": 4, "n_train": 4, "density": 4 / 12,
                              "features": {"image": 3, "text": 2}}


def test_column_order_extra_columns_crlf_and_blank_lines(tmp_path):
    folder = tmp_path / "toy"
    rows = [(r[4], "x y", r[1], r[0]) for r in ROWS]  # x_label, comment with a space, itemID, userID
    path = write_inter(folder, rows, header="x_label\tcomment\titemID\tuserID", newline="\r\n")
    path.write_bytes(path.read_bytes() + b"\r\n\r\n")  # trailing blank lines
    np.save(folder / "image_feat.npy", np.ones((4, 2), np.float32))
    data = read_dataset(folder, features={"image": "image_feat.npy"})
    np.testing.assert_array_equal(data.interactions.toarray(), EXPECTED_TRAIN)


def test_values_with_spaces_or_plus_sign_parse_like_pandas(tmp_path):
    folder = tmp_path / "toy"
    rows = [(" 0", "1 ", 1, 1, "+0"), (12, 345, 1, 1, 0), (7, 3, 1, 1, 2)]
    inter = read_interactions(write_inter(folder, rows))
    np.testing.assert_array_equal(inter.users, [0, 12, 7])
    np.testing.assert_array_equal(inter.items, [1, 345, 3])
    np.testing.assert_array_equal(inter.labels, [0, 0, 2])


def test_vectorised_parser_matches_python_on_many_rows(tmp_path, monkeypatch):
    from mmrec_rearm import data

    monkeypatch.setattr(data, "MAX_ID_SPREAD", 10 ** 9)  # sparse ids on purpose; the id-range check has its own tests
    rng = np.random.default_rng(3)
    n = 5000
    users = rng.integers(0, 10 ** rng.integers(1, 8, n))  # widths 1..7 digits mixed
    items = rng.integers(0, 123456, n)
    labels = rng.integers(0, 3, n)
    rows = list(zip(users.tolist(), items.tolist(), [1] * n, [0] * n, labels.tolist()))
    inter = read_interactions(write_inter(tmp_path / "big", rows))
    np.testing.assert_array_equal(inter.users, users)
    np.testing.assert_array_equal(inter.items, items)
    np.testing.assert_array_equal(inter.labels, labels)


def test_inter_file_override_and_absolute_feature_paths(tmp_path):
    folder = tmp_path / "toy"
    write_inter(folder, name="other.inter")
    elsewhere = tmp_path / "feats"
    elsewhere.mkdir()
    np.save(elsewhere / "v.npy", np.zeros((4, 5), np.float32))
    np.save(folder / "t.npy", np.ones((4, 2), np.float32))
    data = read_dataset(folder, inter_file="other.inter",
                        features={"text": "t.npy", "image": elsewhere / "v.npy"})
    assert data.modalities == ("text", "image")  # mapping order = modality order
    assert data.features["image"].shape == (4, 5)
    assert data.source["inter"].endswith("other.inter")


def test_missing_default_modality_is_skipped_with_warning(tmp_path):
    folder = make_folder(tmp_path, text=False)
    with pytest.warns(UserWarning, match=r"text_feat\.npy.*'text' not found"):
        data = read_dataset(folder)
    assert data.modalities == ("image",)


def test_arrays_to_training_data_drops_none_and_matches_reader(tmp_path):
    folder = make_folder(tmp_path)
    from_files = read_dataset(folder)
    train = [r for r in ROWS if r[4] == 0]
    users = np.array([r[0] for r in train])
    items = np.array([r[1] for r in train])
    feats = {"image": np.arange(12, dtype=np.float64).reshape(4, 3), "text": None}
    data = TrainingData.from_arrays(users, items, 3, 4, feats, source={"inter": "x"})
    assert data.modalities == ("image",)
    assert data.source == {"inter": "x"}
    np.testing.assert_array_equal(data.interactions.toarray(), from_files.interactions.toarray())
    np.testing.assert_array_equal(data.features["image"], from_files.features["image"])
    assert training_data_from_arrays(users, items, 3, 4, feats).source == {}


def test_training_matrix_exact_and_canonical():
    m = training_matrix([2, 0, 2, 0, 2], [1, 3, 1, 0, 0], n_users=4, n_items=5)
    assert m.shape == (4, 5) and m.dtype == np.float32
    np.testing.assert_array_equal(m.indptr, [0, 2, 2, 4, 4])
    np.testing.assert_array_equal(m.indices, [0, 3, 0, 1])
    np.testing.assert_array_equal(m.data, [1, 1, 1, 1])
    assert m.has_canonical_format


# --- error paths ------------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"nope: dataset folder not found"):
        read_dataset(tmp_path / "nope")


def test_missing_inter_file(tmp_path):
    (tmp_path / "toy").mkdir()
    with pytest.raises(DatasetError, match=r"toy\.inter: interaction file not found"):
        read_dataset(tmp_path / "toy")


def test_missing_column(tmp_path):
    folder = tmp_path / "toy"
    write_inter(folder, [(0, 1, 0)], header="userID\titem\tx_label")
    with pytest.raises(DatasetError, match=r"toy\.inter: column 'itemID' missing from the header "
                                           r"\['userID', 'item', 'x_label'\]"):
        read_dataset(folder)


@pytest.mark.parametrize("field,row,value", [
    ("userID", (1.5, 1, 1, 1, 0), "'1.5'"),
    ("itemID", (0, "abc", 1, 1, 0), "'abc'"),
    ("itemID", (0, "", 1, 1, 0), "''"),
    ("x_label", (0, 1, 1, 1, "train"), "'train'"),
])
def test_non_integer_values(tmp_path, field, row, value):
    folder = tmp_path / "toy"
    write_inter(folder, [(0, 0, 1, 1, 0), row])
    with pytest.raises(DatasetError, match=rf"toy\.inter: line 3, column '{field}' has value "
                                           rf"{re.escape(value)}, which is not an integer"):
        read_dataset(folder)


@pytest.mark.parametrize("field,row,value", [("userID", (-2, 0, 1, 1, 0), -2),
                                             ("itemID", (0, -7, 1, 1, 0), -7)])
def test_negative_ids(tmp_path, field, row, value):
    folder = tmp_path / "toy"
    write_inter(folder, [(0, 0, 1, 1, 0), (1, 1, 1, 1, 0), row])
    with pytest.raises(DatasetError, match=rf"toy\.inter: line 4, column '{field}' has negative id {value}"):
        read_dataset(folder)


def test_x_label_out_of_range(tmp_path):
    folder = tmp_path / "toy"
    write_inter(folder, [(0, 0, 1, 1, 0), (0, 1, 1, 1, 3)])
    with pytest.raises(DatasetError, match=r"toy\.inter: line 3, column 'x_label' has value 3; "
                                           r"x_label must be 0 \(train\), 1 \(valid\) or 2 \(test\)"):
        read_dataset(folder)


def test_wrong_number_of_fields(tmp_path):
    folder = tmp_path / "toy"
    write_inter(folder, [(0, 0, 1, 1, 0), (0, 1, 1, 0)])
    with pytest.raises(DatasetError, match=r"toy\.inter: line 3 has 4 tab-separated fields but the header has 5"):
        read_dataset(folder)


def test_empty_training_split(tmp_path):
    folder = tmp_path / "toy"
    write_inter(folder, [(0, 0, 1, 1, 1), (0, 1, 1, 1, 2)])
    with pytest.raises(DatasetError, match=r"toy\.inter: column 'x_label' has no row with value 0 "
                                           r"\(training split empty; rows per split "
                                           r"\{'train': 0, 'valid': 1, 'test': 1\}\)"):
        read_dataset(folder)


def test_header_only(tmp_path):
    folder = tmp_path / "toy"
    write_inter(folder, [])
    with pytest.raises(DatasetError, match=r"toy\.inter: no interaction rows"):
        read_dataset(folder)


def test_no_feature_file_lists_what_was_looked_for(tmp_path):
    folder = make_folder(tmp_path, image=False, text=False)
    with pytest.raises(DatasetError, match=r"no feature file found \(looked for .*image_feat\.npy, "
                                           r".*text_feat\.npy\)"):
        read_dataset(folder)


def test_explicit_missing_feature_file(tmp_path):
    folder = make_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"audio_feat\.npy: feature file for modality 'audio' not found"):
        read_dataset(folder, features={"image": "image_feat.npy", "audio": "audio_feat.npy"})


def test_empty_features_mapping(tmp_path):
    folder = make_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"features mapping is empty"):
        read_dataset(folder, features={})


IMAGE_ONLY = {"image": "image_feat.npy"}


def _folder_with_image(tmp_path, array, allow_pickle=False) -> Path:
    folder = make_folder(tmp_path, image=False, text=False)
    np.save(folder / "image_feat.npy", array, allow_pickle=allow_pickle)
    return folder


def test_feature_wrong_row_count_names_both_numbers(tmp_path):
    folder = _folder_with_image(tmp_path, np.zeros((3, 2), np.float32))
    with pytest.raises(DatasetError, match=r"image_feat\.npy: modality 'image' has 3 rows but the "
                                           r"dataset has 4 items"):
        read_dataset(folder, features=IMAGE_ONLY)


def test_feature_not_2d(tmp_path):
    folder = _folder_with_image(tmp_path, np.zeros(4, np.float32))
    with pytest.raises(DatasetError, match=r"image_feat\.npy: modality 'image' has 1 dimension\(s\) "
                                           r"\(shape \(4,\)\) but must be 2-D"):
        read_dataset(folder, features=IMAGE_ONLY)


def test_feature_non_numeric(tmp_path):
    folder = _folder_with_image(tmp_path, np.array([["a"]] * 4))
    with pytest.raises(DatasetError, match=r"image_feat\.npy: modality 'image' has dtype <U1, not a numeric array"):
        read_dataset(folder, features=IMAGE_ONLY)


def test_feature_object_array_is_refused_without_pickle(tmp_path):
    obj = np.empty((4, 1), dtype=object)
    obj[:] = 1.0
    folder = _folder_with_image(tmp_path, obj, allow_pickle=True)
    with pytest.raises(DatasetError, match=r"image_feat\.npy: modality 'image' could not be loaded without pickle"):
        read_dataset(folder, features=IMAGE_ONLY)


def test_feature_npz_archive(tmp_path):
    folder = make_folder(tmp_path, image=False, text=False)
    with open(folder / "image_feat.npy", "wb") as f:
        np.savez(f, a=np.zeros((4, 2)))
    with pytest.raises(DatasetError, match=r"image_feat\.npy: modality 'image' cannot be used: it is a zip archive "
                                           r"\(an \.npz"):
        read_dataset(folder, features=IMAGE_ONLY)


def test_feature_corrupt_file(tmp_path):
    folder = make_folder(tmp_path, image=False, text=False)
    (folder / "image_feat.npy").write_bytes(b"not an npy file")
    with pytest.raises(DatasetError, match=r"image_feat\.npy: modality 'image'"):
        read_dataset(folder, features=IMAGE_ONLY)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_feature_non_finite_names_first_row(tmp_path, bad):
    arr = np.ones((4, 3), np.float32)
    arr[2, 1] = bad
    arr[3, 0] = bad
    folder = _folder_with_image(tmp_path, arr)
    with pytest.raises(DatasetError, match=rf"image_feat\.npy: modality 'image' value {re.escape(repr(float(bad)))} "
                                           r"at row 2 \(item 2\), column 1 is not finite; 2 row\(s\)"):
        read_dataset(folder, features=IMAGE_ONLY)


def test_feature_float64_overflowing_float32(tmp_path):
    arr = np.ones((4, 2))
    arr[1, 1] = 1e300
    folder = _folder_with_image(tmp_path, arr)
    with pytest.raises(DatasetError, match=r"value 1e\+300 at row 1 \(item 1\), column 1 overflows float32"):
        read_dataset(folder, features=IMAGE_ONLY)


def test_from_arrays_errors():
    with pytest.raises(DatasetError, match=r"modalities \['image', 'text'\] are all None"):
        training_data_from_arrays([0], [0], 1, 1, {"image": None, "text": None})
    with pytest.raises(DatasetError, match=r"feature array 'image': modality 'image' has 2 rows but "
                                           r"the dataset has 3 items"):
        training_data_from_arrays([0], [0], 1, 3, {"image": np.zeros((2, 2))})
    with pytest.raises(DatasetError, match=r"training split is empty"):
        training_data_from_arrays([], [], 1, 1, {"image": np.zeros((1, 2))})
    with pytest.raises(DatasetError, match=r"features must be a mapping"):
        training_data_from_arrays([0], [0], 1, 1, [np.zeros((1, 2))])


def test_training_matrix_errors():
    with pytest.raises(DatasetError, match=r"items contains id 5 outside \[0, 5\)"):
        training_matrix([0, 1], [0, 5], 2, 5)
    with pytest.raises(DatasetError, match=r"users contains id -1 outside \[0, 2\)"):
        training_matrix([-1], [0], 2, 5)
    with pytest.raises(DatasetError, match=r"users has 2 entries but items has 1"):
        training_matrix([0, 1], [0], 2, 5)


def test_training_data_shape_check():
    with pytest.raises(DatasetError, match=r"interactions have shape \(2, 2\) but \(n_users, n_items\) is \(2, 3\)"):
        TrainingData(2, 3, sp.csr_matrix((2, 2), dtype=np.float32), {}, {})


def test_validate_features_keeps_float32_without_copy():
    arr = np.ones((3, 2), np.float32)
    assert validate_features("image", arr, 3) is arr


# --- real data --------------------------------------------------------------------------------

def test_real_tiktok():
    if not (TIKTOK / "tiktok.inter").is_file():
        pytest.skip(f"real TikTok data not found at {TIKTOK} (expected <repo>/../shared/data/tiktok)")
    data = read_dataset(TIKTOK, features={"image": "image_feat.npy", "audio": "audio_feat.npy"})
    assert (data.n_users, data.n_items) == (9308, 6710)
    assert data.interactions.shape == (9308, 6710)
    assert data.n_train == 59541  # 59,541 x_label == 0 rows, no duplicates
    for name in ("image", "audio"):
        assert data.features[name].shape == (6710, 128)
        assert data.features[name].dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_dataset(TIKTOK).modalities == ("image",)  # no text_feat.npy there
