"""Save a grid of SyntheticShapes samples as a PNG, to see what a run trains on.

python scripts/show_shapes.py --orientation any --out shapes.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from symtrain.data import SyntheticShapes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orientation", choices=["upright", "rot90", "any"], default="upright")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="shapes.png")
    args = parser.parse_args()

    count = args.rows * args.cols
    data = SyntheticShapes(
        num_train=count,
        num_val=1,
        num_test=1,
        image_size=args.image_size,
        train_orientation=args.orientation,
        seed=args.seed,
    )
    data.setup()
    train = data.splits["train"]
    figure, axes = plt.subplots(args.rows, args.cols, figsize=(1.2 * args.cols, 1.35 * args.rows))
    for axis, image, label in zip(axes.flat, train.images, train.labels, strict=True):
        axis.imshow(image[0], cmap="gray", vmin=0, vmax=255)
        axis.set_title(data.class_names[label], fontsize=9)
        axis.axis("off")
    figure.suptitle(f"SyntheticShapes, orientation={args.orientation}", fontsize=10)
    figure.tight_layout()
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
