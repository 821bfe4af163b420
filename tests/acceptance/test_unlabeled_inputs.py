"""Bad unlabeled-image inputs, as a new user meets them: missing, empty, junk or unreadable
folders, malformed MGD.UNLABELED.* entries and values, an unlabeled folder where a labeled set
is needed, and ``tools/score_unlabeled.py`` without usable weights. Each is one ERROR line
naming the key or folder and what to give instead.
"""
import os

import pytest

from _as_user import MGD, PLAIN, R18_TEACHER, Case, check, params, write

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


def folder(*files):
    """Setup: a folder ``box`` in the case holding ``files`` ((name, bytes) pairs)."""

    def make(u):
        os.makedirs(u.c("box"))
        for name, data in files:
            with open(u.c("box", name), "wb") as f:
                f.write(data)

    return make


def with_pool(entry_of):
    """An MGD command training on the tiny split plus the unlabeled set ``entry_of(user)``."""
    return lambda u: u.mgd("DATASETS.TRAIN", f"('mini_digits_tiny_train', '{entry_of(u)}')")


def tiny_images(u):
    return os.path.join(u.base.datasets, "mini_digits_tiny", "train")


def score_mgd(u, *opts, dataset="mini_digits_pool_tiny"):
    """score_unlabeled.py with the MGD config (its R18 teacher scores) on ``dataset``."""
    return u.score("--config-file", MGD, "--dataset", dataset, *R18_TEACHER, "MODEL.DEVICE", "cpu",
                   "OUTPUT_DIR", u.c("out"), *opts)


def photo_file(u):
    write(u.c("photo.png"), "x")


CASES = [
    # ------------------------------------------------------------ unlabeled folders
    Case("unlabeled_folder_missing",
         lambda u: u.mgd("MGD.UNLABELED.FOLDERS", f"('pool:{u.c('nope')}',)",
                         "DATASETS.TRAIN", "('mini_digits_tiny_train', 'pool')"),
         error=r"MGD.UNLABELED.FOLDERS entry 'pool:{case}/nope': folder {case}/nope not found: "
               r"give the folder that holds the images"),
    Case("unlabeled_folder_empty", with_pool(lambda u: f"folder:{u.c('box')}"), setup=folder(),
         error=r"DATASETS.TRAIN entry 'folder:{case}/box': folder {case}/box holds no image file \(it is empty\); "
               r"put PNG/JPEG"),
    Case("unlabeled_folder_of_other_files_only", with_pool(lambda u: f"folder:{u.c('box')}"),
         setup=folder(("notes.txt", b"hello"), ("scan.pdf", b"%PDF-1.4")),
         error=r"DATASETS.TRAIN entry 'folder:{case}/box': folder {case}/box holds no image file "
               r"\(only 2 other file\(s\): \.pdf \(1\), \.txt \(1\)\); put PNG/JPEG"),
    Case("unlabeled_folder_of_unreadable_images", with_pool(lambda u: f"folder:{u.c('box')}"),
         setup=folder(("a.png", b"not a png"), ("b.jpg", b"not a jpeg")),
         error=r"Unlabeled set 'folder:{case}/box' \({case}/box\) has no readable image "
               r"\(2 unreadable image file\(s\)\)\. Put PNG/JPEG.* or point the data set at another folder"),
    Case("regular_file_as_unlabeled_folder", with_pool(lambda u: f"folder:{u.c('photo.png')}"), setup=photo_file,
         error=r"DATASETS.TRAIN entry 'folder:{case}/photo.png': {case}/photo.png is a file, not a folder: "
               r"give the folder that holds the images"),
    Case("unlabeled_folders_entry_without_path", lambda u: u.mgd("MGD.UNLABELED.FOLDERS", "('pool',)"),
         error=r"MGD.UNLABELED.FOLDERS entry 'pool' is not 'name:path' \(no ':' between a name and a folder\): "
               r"write e.g. 'my_pool:/data/images'"),
    Case("folder_prefix_without_folder", with_pool(lambda u: "folder:"),
         error=r"DATASETS.TRAIN entry 'folder:' names no folder: write 'folder:/path/to/images'"),
    Case("unlabeled_folder_named_like_a_labeled_set",
         lambda u: u.mgd("MGD.UNLABELED.FOLDERS", f"('mini_digits_tiny_val:{tiny_images(u)}',)"),
         error=r"MGD.UNLABELED.FOLDERS entry 'mini_digits_tiny_val:\S+': 'mini_digits_tiny_val' is the name of a "
               r"labeled data set; give the folder another name"),
    # ------------------------------------------------------------ unlabeled keys
    Case("unlabeled_temperature_zero", lambda u: u.mgd("MGD.UNLABELED.TEMPERATURE", "0.0"),
         error=r"MGD.UNLABELED.TEMPERATURE is 0.0; it must be > 0"),
    Case("unlabeled_sampling_misspelt", lambda u: u.mgd("MGD.UNLABELED.SAMPLING", "preferental"),
         error=r"MGD.UNLABELED.SAMPLING is 'preferental'; it must be one of \('preferential', 'uniform'\)"),
    Case("labeled_share_above_one", lambda u: u.mgd("MGD.UNLABELED.LABELED_SHARE", "1.5"),
         error=r"MGD.UNLABELED.LABELED_SHARE is 1.5; it must be in \(0, 1\)"),
    Case("unlabeled_folder_in_datasets_test", lambda u: u.mgd("DATASETS.TEST", f"('folder:{tiny_images(u)}',)"),
         error=r"DATASETS.TEST entry 'folder:\S+' is an unlabeled image folder: evaluation needs a labeled "
               r"\(COCO-format\) set; remove it from DATASETS.TEST"),
    # ------------------------------------------------------------ score_unlabeled.py
    Case("score_unlabeled_teacher_weights_missing", lambda u: score_mgd(u, "MGD.TEACHER.WEIGHTS", u.c("nope.pth")),
         error=r"Teacher weights not found: {case}/nope.pth \(MGD.TEACHER.WEIGHTS\): train the teacher first"),
    Case("score_unlabeled_plain_config_without_weights",
         lambda u: u.score("--config-file", PLAIN, "--dataset", "mini_digits_pool_tiny", "MODEL.DEVICE", "cpu",
                           "OUTPUT_DIR", u.c("out"), "MODEL.WEIGHTS", ""),
         error=r"MODEL.WEIGHTS is empty: give the trained detector's checkpoint to score with"),
    Case("score_unlabeled_folder_dataset_is_a_file",
         lambda u: score_mgd(u, "MGD.TEACHER.WEIGHTS", u.base.teacher, dataset=f"folder:{u.c('photo.png')}"),
         setup=photo_file,
         error=r"--dataset 'folder:{case}/photo.png': {case}/photo.png is a file, not a folder: "
               r"give the folder that holds the images"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_unlabeled_input(case, user):
    check(case, user)
