#!/usr/bin/env python
"""Generate a heterogeneous unlabeled image pool for the bundled mini digits data.

Some images show handwritten digits (relevant to a mini digits detector), most do not:
shapes, letters, textures, natural-photo crops. Writes OUT/images/ (mixed formats) and the
ground truth of relevance to OUT/relevance.json, outside the image folder, for measurement
only. The registered pools (mini_digits_pool, mini_digits_pool_tiny) are generated on first
use anyway; use this to pre-generate one or to make another size or share:

    python tools/make_unlabeled_pool.py --name mini_digits_pool
    python tools/make_unlabeled_pool.py --out datasets/my_pool --num-images 5000 --relevant-share 0.1

Then train on it with e.g. ``MGD.UNLABELED.FOLDERS "('my_pool:datasets/my_pool/images',)"``.
"""
import argparse
import json
import logging
import os
import sys

from mgd_det.data.pool import POOL_SPECS, PoolSpec, ensure_pool, pool_paths
from mgd_det.errors import DataError

logger = logging.getLogger("make_unlabeled_pool")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--name", choices=sorted(POOL_SPECS), help="a registered pool, under the data root")
    where.add_argument("--out", help="folder of a new pool (images/ and relevance.json inside)")
    default = PoolSpec("")
    parser.add_argument("--num-images", type=int, default=default.num_images)
    parser.add_argument("--relevant-share", type=float, default=default.relevant_share)
    parser.add_argument("--image-size", type=int, default=default.image_size)
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--digit-pool", choices=("train", "heldout"), default=default.digit_pool,
                        help="handwriting samples of the relevant images (mini digits' train or val writers)")
    args = parser.parse_args(argv)

    if args.name:
        from mgd_det.data.datasets import dataset_root

        spec, root = POOL_SPECS[args.name], dataset_root()
    else:
        out = os.path.abspath(os.path.expanduser(args.out))
        root = os.path.dirname(out)
        spec = PoolSpec(
            os.path.basename(out), num_images=args.num_images, relevant_share=args.relevant_share,
            image_size=args.image_size, seed=args.seed, digit_pool=args.digit_pool,
        )
    image_dir, json_path = pool_paths(root, spec)
    if os.path.isfile(json_path):
        with open(json_path, "r", encoding="utf-8") as f:
            existing = json.load(f).get("params")
        if existing != spec.params():
            raise DataError(f"{os.path.dirname(json_path)} already holds a pool made with {existing}; delete it "
                            "or choose another --out")
    ensure_pool(spec, root)
    with open(json_path, "r", encoding="utf-8") as f:
        record = json.load(f)
    logger.info(
        "Pool %s: %d images (%d relevant) of %dx%d in %s; relevance ground truth: %s",
        spec.subdir, record["num_images"], record["num_relevant"], spec.image_size, spec.image_size,
        image_dir, json_path,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mgd_det.engine.cli import run_cli

    sys.exit(run_cli(main))
