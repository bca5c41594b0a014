"""Choosing rho and T for the `weight` MRS estimator: for a small CNN trained on real Fashion-MNIST, the time and
the unit ranking for each (rho, T), compared by Spearman correlation with T = 10 at the same rho.

    python benchmarks/mrs_steps.py --train 10000 --samples 512 --out mrs_steps.json
"""
from __future__ import annotations

import argparse
import time

import torch

from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.checkpoint import atomic_json
from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.models import build_model
from nni_mrs_plugin.mrs.sensitivity import WeightMRS
from nni_mrs_plugin.train.loop import train_natural


def spearman(a: dict, b: dict) -> float:
    keys = sorted(a)
    ranks = []
    for scores in (a, b):
        order = sorted(keys, key=scores.__getitem__)
        ranks.append(torch.tensor([order.index(k) for k in keys], dtype=torch.float64))
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--train", type=int, default=10000, help="training samples for the 1-epoch model")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--rhos", default="0.05,0.1,0.2")
    parser.add_argument("--steps", default="1,2,3,5,10")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    train = load_dataset("fashion_mnist", train=True, subset=args.train, seed=0)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    model = train_natural(build_model(args.model, num_classes=10, in_channels=1), loader, epochs=1, progress=False)
    allocator = MRSSparsityAllocator("weight", n_samples=args.samples, progress=False)
    x0 = train[0][0].unsqueeze(0)
    _, units, _, graph_module = allocator.units(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}], x0)
    x_adv, y = allocator.calibrate(model, loader)
    rows = []
    for rho in map(float, args.rhos.split(",")):
        runs = {}
        for steps in map(int, args.steps.split(",")):
            start = time.perf_counter()
            runs[steps] = WeightMRS(rho=rho, steps=steps, progress=False)(model, units, x_adv, y, graph_module)
            runs[steps] = (runs[steps], time.perf_counter() - start)
        reference = runs[max(runs)][0]
        for steps, (scores, seconds) in runs.items():
            rows.append({"rho": rho, "steps": steps, "seconds": seconds, "spearman_vs_T_max": spearman(scores, reference),
                         "scores": scores})
            print(f"rho={rho:<5} T={steps:<3} {seconds:6.1f} s  spearman vs T={max(runs)}: "
                  f"{rows[-1]['spearman_vs_T_max']:+.3f}  " + " ".join(f"{v:.4f}" for v in scores.values()), flush=True)
    longest = [r for r in rows if r["steps"] == max(int(s) for s in args.steps.split(","))]
    ranking = {f"rho={a['rho']} vs {b['rho']}": spearman(a["scores"], b["scores"])
               for a, b in zip(longest, longest[1:])}
    print("rank agreement between neighbouring rho at T max:", ranking)
    if args.out:
        atomic_json(args.out, {"units": [u.name for u in units], "rows": rows})


if __name__ == "__main__":
    main()
