"""Bad labeled data, as a new user meets it: unregistered or malformed set names, a user's own
COCO files missing, truncated or inconsistent, bad boxes, unreadable images, and a class count
below the data's. Each is one ERROR line naming the set or file and the fix; boxes that can
be repaired or dropped are one WARNING and the run trains.
"""
import pytest

from _as_user import Case, check, params

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

NOT_REGISTERED = (r"data set 'my_trian' is not registered \(DATASETS.TRAIN / DATASETS.TEST\): register your "
                  r"COCO-format data with DATASETS.COCO_SETS \"\('my_trian:path/to/annotations.json:path/to/images',\)\"")

CASES = [
    Case("train_set_not_registered", lambda u: u.plain("DATASETS.TRAIN", "('my_trian',)"), error=NOT_REGISTERED),
    Case("two_processes_train_set_not_registered",  # the line is printed once, not once per process
         lambda u: u.plain("DATASETS.TRAIN", "('my_trian',)", flags=["--num-gpus", "2"]), error=NOT_REGISTERED),
    Case("coco_sets_entry_without_fields", lambda u: u.plain("DATASETS.COCO_SETS", "('my_train',)"),
         error=r"DATASETS.COCO_SETS entry 'my_train' must be 'NAME:ANNOTATIONS.json:IMAGE_DIR', e.g. "),
    Case("annotation_file_missing", lambda u: u.plain(*u.own_set("own_missing", "nope.json")),
         error=r"data set 'own_missing': annotation file {base}/own/nope.json not found: check the path given at "
               r"registration \(DATASETS.COCO_SETS\)"),
    Case("image_folder_missing", lambda u: u.plain(*u.own_set("own_noimg", "good.json", images="no_images")),
         error=r"data set 'own_noimg': image directory {base}/own/no_images not found: check the path given at "
               r"registration \(DATASETS.COCO_SETS\)"),
    Case("annotation_file_truncated", lambda u: u.plain(*u.own_set("own_trunc", "truncated.json")),
         error=r"annotation file {base}/own/truncated.json is not valid JSON \(.+\); fix or replace it"),
    Case("annotation_file_without_categories", lambda u: u.plain(*u.own_set("own_nocat", "no_categories.json")),
         error=r"annotation file {base}/own/no_categories.json is not a COCO instances file "
               r"\(missing 'categories'\); fix or replace it"),
    Case("annotation_with_unknown_category", lambda u: u.plain(*u.own_set("own_cat", "unknown_category.json")),
         error=r"annotation file {base}/own/unknown_category.json: annotations use category_id \[99\] not listed "
               r"in 'categories' .*; add the categories or fix the annotations"),
    Case("bad_boxes_dropped_or_clipped",  # no bbox, empty, NaN, negative width, outside, 0.5 px overshoot
         lambda u: u.plain(*u.own_set("own_bad", "bad_boxes.json"), "SOLVER.MAX_ITER", "1"), rc=0,
         warning=r"Data set 'own_bad': \d+ images, \d+ boxes checked: dropped 5, clipped 1: 2 without bbox .*"
                 r"1 non-finite bbox .*1 width or height <= 0 .*1 clipped to the image .*"
                 r"1 outside the image beyond the tolerance .*Fix the annotation file to silence this"),
    Case("every_box_invalid", lambda u: u.plain(*u.own_set("own_empty", "all_invalid.json")),
         error=r"no usable image in data set own_empty \(DATASETS.TRAIN\): every image lacks valid annotations .*"
               r"fix the annotation file, or set DATALOADER.FILTER_EMPTY_ANNOTATIONS False"),
    Case("truncated_png_in_training_images",
         lambda u: u.plain(*u.own_set("own_png", "good.json", images="broken_images"), "SOLVER.MAX_ITER", "8",
                           "SOLVER.IMS_PER_BATCH", "4"),
         error=r"cannot read image {base}/own/broken_images/\S+\.png \(data set own_png\): OSError: image file is "
               r"truncated; replace the file or remove its entry from the annotation file"),
    Case("num_classes_below_the_data", lambda u: u.plain("MODEL.RETINANET.NUM_CLASSES", "5"),
         error=r"data set 'mini_digits_tiny_train' has 10 categories but MODEL.RETINANET.NUM_CLASSES is 5: "
               r"set MODEL.RETINANET.NUM_CLASSES 10"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_data_input(case, user):
    check(case, user)
