"""What MRS costs next to adversarial training: seconds to allocate with each estimator (calibration attack
included) against the measured throughput of PGD-10 adversarial training of the same model.

    python benchmarks/mrs_cost.py --model resnet18 --samples 512 --at-samples 512 --out mrs_cost.json

Each estimator is timed where it measures MRS: the power rule with tau = 1 (``curve``: the budget rule).
``default`` times what ``MRSPruner`` does with its defaults (uniform ratios, adversarial Taylor channels): the whole
one-shot ``compress()``, the calibration attack and the Taylor gradients included.

The epoch figure is 50,000 / (measured PGD-10 training samples per second): the full epoch is not run.
Inputs are random CIFAR-sized tensors: cost does not depend on the pixel values. One untimed `taylor`
allocation warms up CUDA and NNI's tracer first, so the first estimator timed is not charged for them.
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from typing import Optional, Sequence

import torch
import torchattacks

from nni_mrs_plugin.mrs.allocator import MRSSparsityAllocator
from nni_mrs_plugin.mrs.pruner import MRSPruner
from nni_mrs_plugin.mrs.sensitivity import ESTIMATORS
from nni_mrs_plugin.checkpoint import atomic_json
from nni_mrs_plugin.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pgd_training_throughput(model, x, y, batch_size: int, device) -> float:
    """Samples/s of Madry PGD-10 training (eps 8/255, alpha 2/255): attack in eval mode, then an SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    xb, yb = batches[0]  # warm-up
    torch.nn.functional.cross_entropy(model(attack(xb, yb)), yb).backward()
    sync(device)
    start = time.perf_counter()
    for xb, yb in batches:
        adv = attack(xb, yb)
        model.train()
        loss = torch.nn.functional.cross_entropy(model(adv), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return len(x) / (time.perf_counter() - start)


def time_estimator(name: str, model, config, x, y, args, device) -> dict:
    """Seconds of one allocation (``default``: MRSPruner's one-shot compress with its defaults)."""
    sync(device)
    start = time.perf_counter()
    if name == "default":
        pruner = MRSPruner(copy.deepcopy(model), config, calibration=(x, y), dummy_input=x[:1],
                           n_samples=len(x), batch_size=args.batch_size, progress=False)
        pruner.compress()
        pruner.unwrap_model()
        measured = pruner.allocation.measured
    else:
        options = {"steps": args.steps} if name == "weight" else {}
        # where each estimator measures MRS: tau = 1 (tau = 0, the default, gives uniform ratios and measures none)
        options.update({"rule": "budget"} if name == "curve" else {"tau": 1.0})
        allocator = MRSSparsityAllocator(name, n_samples=len(x), batch_size=args.batch_size, progress=False,
                                         **options)
        measured = allocator.allocate(model, config, (x, y), x[:1]).measured
    sync(device)
    return {"seconds": time.perf_counter() - start, "mrs_measured": measured}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--samples", type=int, default=512, help="MRS calibration samples")
    parser.add_argument("--at-samples", type=int, default=512, help="samples of PGD-10 training to time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32, help="side of the random square inputs (CIFAR: 32)")
    parser.add_argument("--estimators", default="default,feature,weight,probe,curve,taylor",
                        help="comma-separated: default (MRSPruner's defaults), feature, weight, probe, curve, taylor")
    parser.add_argument("--steps", type=int, default=5, help="ascent steps T of the weight estimator")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    known = {"default", *ESTIMATORS}
    bad = [name for name in args.estimators.split(",") if name not in known]
    if bad:
        parser.error(f"unknown estimator {bad[0]!r} in --estimators; choose from {', '.join(sorted(known))}")

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=3).to(device)
    x = torch.rand(max(args.samples, args.at_samples), 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)
    config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]
    results = {"model": args.model, "device": str(device), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
               "calibration_samples": args.samples,
               "estimators": {}}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    # warm-up: the first allocation pays CUDA/cuDNN initialisation and NNI's first trace, whatever the estimator
    MRSSparsityAllocator("taylor", tau=1.0, n_samples=args.batch_size, batch_size=args.batch_size,
                         progress=False).allocate(
        model, config, (x[:args.batch_size], y[:args.batch_size]), x[:1])
    for name in args.estimators.split(","):
        results["estimators"][name] = time_estimator(name, model, config, x[:args.samples], y[:args.samples], args,
                                                     device)
        print(f"MRS {name}: {results['estimators'][name]['seconds']:.1f} s", flush=True)
    rate = pgd_training_throughput(model, x[:args.at_samples], y[:args.at_samples], args.batch_size, device)
    epoch = 50_000 / rate
    results.update({"pgd10_training_samples_per_s": rate, "pgd10_epoch_50k_seconds_from_rate": epoch})
    print(f"PGD-10 training: {rate:.1f} samples/s -> 50k-sample epoch {epoch:.0f} s")
    for name, entry in results["estimators"].items():
        entry["fraction_of_epoch"] = entry["seconds"] / epoch
        print(f"MRS {name}: {100 * entry['fraction_of_epoch']:.2f}% of one PGD-10 epoch")
    if args.out:
        atomic_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
