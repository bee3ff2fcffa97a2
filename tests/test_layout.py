"""The HuBMAP folder layout (scripts/layout.py): ids that are safe as file names, reading the
two-column CSV files with bad rows set aside, and finding train and test slides."""

from __future__ import annotations

import pytest

from scripts.errors import DatasetError
from scripts.layout import HubmapFolder, check_slide_id, is_safe_id, read_csv_rows

GOOD_IDS = ["aaa6a05cc", "a-b_c.1", "2f6ecfcdf", "A", "x.tiff"]
BAD_IDS = ["../x", "a/b", "/abs", "a\\b", "..", ".", "", "a b", " a", "a ", "a..b", ".hidden", "-x", "a\nb", "a:b"]


@pytest.mark.parametrize("slide_id", GOOD_IDS)
def test_plain_ids_are_safe(slide_id):
    assert is_safe_id(slide_id)
    assert check_slide_id(slide_id, "train.csv row 2") == slide_id


@pytest.mark.parametrize("slide_id", BAD_IDS)
def test_ids_that_could_name_other_paths_are_rejected(slide_id):
    assert not is_safe_id(slide_id)
    with pytest.raises(DatasetError, match="train.csv row 7") as caught:
        check_slide_id(slide_id, "train.csv row 7")
    assert "fix the id" in str(caught.value)


def test_overlong_ids_are_rejected():
    assert is_safe_id("a" * 128) and not is_safe_id("a" * 129)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- read_csv_rows ------------------------------------------------------------------------------


def test_csv_rows_are_read_in_file_order_with_locations(tmp_path):
    path = write(tmp_path / "train.csv", "id,encoding\nb1,1 2\na1,\n c2 , 3 4 \n")
    rows, problems = read_csv_rows(path, "encoding")
    assert problems == {}
    assert [(r.slide_id, r.value, r.where) for r in rows] == [
        ("b1", "1 2", "train.csv row 2"),
        ("a1", "", "train.csv row 3"),
        ("c2", "3 4", "train.csv row 4"),
    ]


def test_csv_with_the_wrong_header_names_the_file(tmp_path):
    path = write(tmp_path / "train.csv", "id,predicted\na,1 2\n")
    with pytest.raises(DatasetError, match=r"train\.csv.*'id,encoding'"):
        read_csv_rows(path, "encoding")


@pytest.mark.parametrize("text", ["", "encoding\n1 2\n", "\x00\x01binary"])
def test_csv_without_an_id_column_is_a_dataset_error(tmp_path, text):
    path = write(tmp_path / "sample_submission.csv", text)
    with pytest.raises(DatasetError, match="sample_submission.csv"):
        read_csv_rows(path, "predicted")


def test_unreadable_csv_is_a_dataset_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"id,encoding\n\xff\xfe\xfa,1 2\n")
    with pytest.raises(DatasetError, match="train.csv"):
        read_csv_rows(path, "encoding")
    with pytest.raises(DatasetError, match="missing.csv"):
        read_csv_rows(tmp_path / "missing.csv", "encoding")


def test_bad_and_repeated_ids_are_set_aside_by_row(tmp_path):
    path = write(tmp_path / "train.csv", "id,encoding\ngood,1 1\n../etc,1 1\ngood,2 2\n,3 3\nother,\n")
    rows, problems = read_csv_rows(path, "encoding")
    assert [(r.slide_id, r.value) for r in rows] == [("good", "1 1"), ("other", "")]
    assert sorted(problems) == ["train.csv row 3", "train.csv row 4", "train.csv row 5"]
    assert "'../etc'" in problems["train.csv row 3"]
    assert "appears twice" in problems["train.csv row 4"] and "'good'" in problems["train.csv row 4"]


def test_very_long_rle_fields_are_read(tmp_path):
    rle = " ".join(f"{1 + 10 * i} 5" for i in range(200_000))  # about 2 MB
    assert len(rle) > 1_000_000
    path = write(tmp_path / "train.csv", f"id,encoding\nbig,{rle}\nsmall,1 1\n")
    rows, problems = read_csv_rows(path, "encoding")
    assert problems == {} and [r.slide_id for r in rows] == ["big", "small"]
    assert rows[0].value == rle


# --- HubmapFolder -------------------------------------------------------------------------------


def test_missing_root_points_to_the_demo(tmp_path):
    with pytest.raises(DatasetError) as caught:
        HubmapFolder(tmp_path / "nowhere")
    message = str(caught.value)
    assert "nowhere" in message and "demo" in message


def test_labelled_slides_skip_rows_without_an_image(tmp_path):
    write(tmp_path / "train" / "a.tiff", "x")
    write(tmp_path / "train" / "c.tif", "x")
    write(tmp_path / "train.csv", "id,encoding\na,1 2\nb,3 4\nc,\n")
    folder = HubmapFolder(tmp_path)
    slides = folder.labelled_slides()
    assert list(slides) == ["a", "c"]
    assert slides["a"][0] == tmp_path / "train" / "a.tiff" and slides["a"][1].value == "1 2"
    assert slides["c"][0] == tmp_path / "train" / "c.tif"
    assert list(folder.problems) == ["b"]
    message = folder.problems["b"]
    assert "train.csv row 3" in message and "train/b.tiff" in message
    assert "add the file or remove the row" in message


def test_labelled_slides_report_bad_rows(tmp_path):
    write(tmp_path / "train" / "a.tiff", "x")
    write(tmp_path / "train.csv", "id,encoding\na,1 2\na/b,3 4\n")
    folder = HubmapFolder(tmp_path)
    assert list(folder.labelled_slides()) == ["a"]
    assert list(folder.problems) == ["train.csv row 3"]


def test_labelled_slides_from_solution_csv_look_in_test(tmp_path):
    write(tmp_path / "test" / "t1.tiff", "x")
    write(tmp_path / "solution.csv", "id,encoding\nt1,5 5\n")
    slides = HubmapFolder(tmp_path).labelled_slides("solution.csv", "test")
    assert slides["t1"][0] == tmp_path / "test" / "t1.tiff"


def test_missing_train_csv_is_a_dataset_error(tmp_path):
    write(tmp_path / "train" / "a.tiff", "x")
    with pytest.raises(DatasetError, match=r"train\.csv not found"):
        HubmapFolder(tmp_path).labelled_slides()


def test_test_slides_follow_sample_submission(tmp_path):
    for name in ("t1", "t2", "extra"):
        write(tmp_path / "test" / f"{name}.tiff", "x")
    write(tmp_path / "sample_submission.csv", "id,predicted\nt2,\nt1,\nmissing,\n")
    folder = HubmapFolder(tmp_path)
    slides = folder.test_slides()
    assert slides == {"t2": tmp_path / "test" / "t2.tiff", "t1": tmp_path / "test" / "t1.tiff"}
    assert list(slides) == ["t2", "t1"]
    assert list(folder.problems) == ["missing"]
    assert "sample_submission.csv row 4" in folder.problems["missing"]


def test_test_slides_without_sample_submission_are_the_tiffs_in_test(tmp_path):
    for name in ("b.tiff", "a.tif", "notes.txt", "bad name.tiff"):
        write(tmp_path / "test" / name, "x")
    folder = HubmapFolder(tmp_path)
    slides = folder.test_slides()
    assert slides == {"a": tmp_path / "test" / "a.tif", "b": tmp_path / "test" / "b.tiff"}
    assert list(folder.problems) == [str(tmp_path / "test" / "bad name.tiff")]


def test_test_slides_with_no_test_folder_is_empty(tmp_path):
    assert HubmapFolder(tmp_path).test_slides() == {}


def test_an_mpp_column_is_read_where_present_and_kept_for_the_rows_that_state_one(tmp_path):
    rows, _ = read_csv_rows(write(tmp_path / "train.csv", "id,encoding,mpp\na,1 2, 0.5 \nb,1 2,\n"), "encoding")
    assert [(row.slide_id, row.mpp) for row in rows] == [("a", "0.5"), ("b", "")]
    (tmp_path / "train").mkdir()
    for slide_id in ("a", "b"):
        (tmp_path / "train" / f"{slide_id}.tiff").write_bytes(b"")
    folder = HubmapFolder(tmp_path)
    folder.labelled_slides()
    assert list(folder.mpp_rows) == ["a"] and folder.mpp_rows["a"].where == "train.csv row 2"
    assert read_csv_rows(write(tmp_path / "plain.csv", "id,encoding\na,1 2\n"), "encoding")[0][0].mpp == ""


def test_scanner_files_in_either_case_are_listed_and_found_and_an_mrxs_folder_is_not_a_slide(tmp_path):
    for name in ("a.SVS", "b.ndpi", "c.mrxs", "d.scn", "e.BIF"):
        write(tmp_path / "test" / name, "x")
    (tmp_path / "test" / "c").mkdir()  # the MRXS slide's data folder
    folder = HubmapFolder(tmp_path)
    assert sorted(folder.test_slides()) == ["a", "b", "c", "d", "e"] and not folder.problems
    assert folder.slide_path("test", "a") == tmp_path / "test" / "a.SVS"
    assert folder.slide_path("test", "e") == tmp_path / "test" / "e.BIF"
