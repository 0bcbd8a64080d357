"""BD-rate (PSNR) of per-image CSV B against A over kodim01-04, for each pair of arguments A B
(mean bpp and mean PSNR per quality over the four images)."""
import csv, sys
from collections import defaultdict
from gainedvae.bd import bd_rate
def curve(path, imgs):
    acc = defaultdict(list)
    for r in csv.DictReader(open(path)):
        if r['image'] in imgs: acc[float(r['quality'])].append((float(r['bpp']), float(r['psnr'])))
    qs = sorted(acc)
    bpp = [sum(b for b, _ in acc[q]) / len(acc[q]) for q in qs]
    # PSNR from mean MSE as eval_gain does? use mean PSNR
    ps = [sum(p for _, p in acc[q]) / len(acc[q]) for q in qs]
    return bpp, ps
imgs = {f'kodim0{i}.png' for i in range(1, 5)}
pairs = sys.argv[1:]
for a, b in zip(pairs[::2], pairs[1::2]):
    A = curve(a, imgs); B = curve(b, imgs)
    print(b.split('/')[-1], 'vs', a.split('/')[-1], f"{bd_rate(A[0], A[1], B[0], B[1]):+.2f} %")
