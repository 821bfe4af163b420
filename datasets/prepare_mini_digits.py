#!/usr/bin/env python
"""Generate a mini digits split (COCO format) explicitly.

The registered sets are generated on first use anyway; use this to pre-generate them or to
make a split with other sizes:

    python datasets/prepare_mini_digits.py --root datasets/mini_digits --split train --num-images 2000
"""
import argparse
import logging

from mgd_det.data.mini_digits import generate_mini_digits

logger = logging.getLogger("prepare_mini_digits")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="datasets/mini_digits", help="output folder of the set")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = generate_mini_digits(args.root, args.split, args.num_images, args.image_size, args.seed)
    logger.info("Wrote %s", path)


if __name__ == "__main__":
    main()
