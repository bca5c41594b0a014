# A fit() run on a real Fashion-MNIST subset, as a separate process: the kill-and-resume test SIGKILLs it, and
# the DDP test launches it under torchrun (2 gloo processes) and alone. Every rank writes its final weights.
import argparse
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from nni_mrs_plugin.train.trainer import DISTILLING, AdversarialTrainer
from nni_mrs_plugin.data import load_dataset
from nni_mrs_plugin.train.fit import fit
from nni_mrs_plugin.models import build_model


def plain_cnn() -> nn.Module:
    """No BatchNorm: with per-process batch statistics gone, 2 processes must match 1 to float precision."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 6 * 6, 10))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", choices=["small_cnn", "plain_cnn"], default="small_cnn")
    parser.add_argument("--method", default="pgd")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = plain_cnn() if args.model == "plain_cnn" else build_model("small_cnn", in_channels=1)
    train = DataLoader(load_dataset("fashion_mnist", True, subset=args.train, seed=1), batch_size=args.batch)
    val = DataLoader(load_dataset("fashion_mnist", False, subset=args.val, seed=2), batch_size=64)
    teacher = None
    if args.method in DISTILLING:  # a fixed, seeded teacher: the resumed run must see the same one
        torch.manual_seed(1)
        teacher = build_model("small_cnn", in_channels=1)
    trainer = AdversarialTrainer(args.method, eps=0.1, steps=args.steps, teacher=teacher)
    result = fit(model, train, val, epochs=args.epochs, trainer=trainer, checkpoint_dir=args.out, resume=args.resume,
                 val_steps=2, restore_best=False, progress=True, log_every=4)
    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)
    torch.save(model.state_dict(), out / f"final_rank{rank}.pt")
    (out / f"result_rank{rank}.json").write_text(json.dumps(result.to_dict()))


if __name__ == "__main__":
    main()
