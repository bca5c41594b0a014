"""Adversarial fine-tuning throughput against plain forward+backward throughput of the same model and batch.

Goal (issue 4): adversarial samples/s >= 0.9 x fwd_bwd / (k + 1) on GPU, k being the attack's gradient steps
(PGD-type: ``--steps``; fast: 1; natural: 0). Each timed step is a full optimizer step (forward, backward, SGD),
on a fixed random batch in [0, 1] (speed does not depend on the pixels). Prints JSON; ``--json`` also writes it.

    python benchmarks/adv_throughput.py --batch 128 --steps 10 --iters 5
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Callable, Dict

import torch
from torch import nn

from nni_mrs_plugin.train.trainer import METHODS, AdversarialTrainer
from nni_mrs_plugin.checkpoint import atomic_json
from nni_mrs_plugin.models import build_model
from nni_mrs_plugin.train.loop import cross_entropy_loss

SHAPES = {"small_cnn": (1, 28), "resnet18": (3, 32), "vgg16_bn": (3, 32), "mobilenet_v2": (3, 32)}


def _samples_per_s(step: Callable[[], None], batch: int, warmup: int, iters: int, cuda: bool) -> float:
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(iters):
        step()
    if cuda:
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - began)


def _train_step(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        loss = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="attack steps of pgd/trades/mart")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (attack and loss)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    channels, side = SHAPES[args.model]
    torch.manual_seed(0)
    model = build_model(args.model, in_channels=channels).to(device).train()
    x = torch.rand(args.batch, channels, side, side, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    plain = AdversarialTrainer("natural", amp=args.amp, channels_last=args.channels_last)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
        x = plain.prepare(x)

    fwd_bwd = _samples_per_s(_train_step(model, plain.loss, x, y) if args.amp else
                             _train_step(model, cross_entropy_loss, x, y), args.batch, args.warmup, args.iters, cuda)
    result = {"model": args.model, "batch": args.batch, "attack_steps": args.steps, "eps": args.eps,
              "amp_bf16": args.amp, "channels_last": args.channels_last, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "iters": args.iters,
              "fwd_bwd_samples_per_s": round(fwd_bwd, 1), "methods": {}}
    for method in args.methods.split(","):
        trainer = AdversarialTrainer(method, eps=args.eps, steps=args.steps, amp=args.amp,
                                     channels_last=args.channels_last)
        k = {"natural": 0, "fast": 1}.get(method, args.steps)
        speed = _samples_per_s(_train_step(model, trainer.loss, x, y), args.batch, args.warmup, args.iters, cuda)
        budget = fwd_bwd / (k + 1)
        result["methods"][method] = {"samples_per_s": round(speed, 1), "gradient_steps_k": k,
                                     "goal_fwd_bwd_over_k_plus_1": round(budget, 1),
                                     "ratio_to_goal": round(speed / budget, 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
