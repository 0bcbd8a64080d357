"""BD-rate (PSNR) of per-image CSV B against CSV A (``eval_gain.py``'s ``*-per-image.csv``) over a
subset of the images, for each pair of arguments A B: each curve is ``gainedvae.evaluate.aggregate``
of the subset's rows (the mean over images per quality, as ``eval_gain.py`` writes its JSON)."""
import argparse
import csv
import dataclasses

from gainedvae.bd import bd_rate
from gainedvae.evaluate import Row, aggregate


def curve(path, images):
    fields = [f.name for f in dataclasses.fields(Row)]
    with open(path, newline="") as f:
        rows = [Row(**{k: (r[k] if k == "image" else float(r[k])) for k in fields})
                for r in csv.DictReader(f) if r["image"] in images]
    return aggregate(rows, path, "subset")["results"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("csv", nargs="+", help="pairs of per-image CSVs: A B [A B ...] (B against A)")
    p.add_argument("--images", nargs="+", default=[f"kodim0{i}.png" for i in range(1, 5)],
                   help="images of the subset (default: %(default)s)")
    args = p.parse_args(argv)
    if len(args.csv) % 2:
        p.error(f"expected pairs of CSVs, got {len(args.csv)} paths")
    for a, b in zip(args.csv[::2], args.csv[1::2]):
        A, B = curve(a, set(args.images)), curve(b, set(args.images))
        print(b.split("/")[-1], "vs", a.split("/")[-1], f"{bd_rate(A['bpp'], A['psnr-rgb'], B['bpp'], B['psnr-rgb']):+.2f} %")


if __name__ == "__main__":
    main()
