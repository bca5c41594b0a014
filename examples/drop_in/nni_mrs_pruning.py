"""An NNI 3.0 pruning script in the shape of NNI's own examples: train a small CNN on Fashion-MNIST, prune it,
remove the pruned channels with ModelSpeedup, fine-tune, and print params, FLOPs, clean and PGD accuracy.

``nni_l1_pruning.py`` prunes with L1NormPruner and trains plainly; ``nni_mrs_pruning.py`` is the same script with
MRSPruner and adversarial training, and ``diff -u nni_l1_pruning.py nni_mrs_pruning.py`` is the whole change.
Tiny by default (a few thousand images, one epoch each); ``--help`` lists the sizes.
"""
import argparse
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from nni.compression.pruning import MRSPruner  # registered by nni_mrs_plugin (import or .pth hook)
from nni.compression.speedup import ModelSpeedup

from nni_mrs_plugin import AdversarialTrainer
from nni_mrs_plugin import build_model, count_flops, count_params, evaluate_robustness, load_dataset

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def checked(kind: Callable[[str], Any], valid: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, refused with a one-line error unless ``valid``."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value
    parse.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


positive_int = checked(int, lambda value: value >= 1, ">= 1")
fraction = checked(float, lambda value: 0.0 < value < 1.0, "in (0, 1)")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=fraction, default=0.75,
                        help="config_list sparse_ratio: the fraction of the whole model's FLOPs to remove")
    parser.add_argument("--train-subset", type=positive_int, default=2000, help="training images (default 2000)")
    parser.add_argument("--test-subset", type=positive_int, default=500, help="test images (default 500)")
    parser.add_argument("--epochs", type=positive_int, default=1, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=positive_int, default=1, help="fine-tuning epochs after pruning")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lr", type=fraction, default=0.02)
    parser.add_argument("--eps", type=fraction, default=0.1, help="L-inf radius of the PGD attack, pixels in [0, 1]")
    parser.add_argument("--pgd-steps", type=positive_int, default=5,
                        help="PGD iterations (step eps/4) in evaluation and in adversarial training")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train(model: nn.Module, train_loader: DataLoader, epochs: int, args: argparse.Namespace) -> None:
    """Adversarial training: SGD with momentum on the cross-entropy of PGD examples (Madry et al.)."""
    trainer = AdversarialTrainer("pgd", eps=args.eps, steps=args.pgd_steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = trainer.loss(model, x, y)
            loss.backward()
            optimizer.step()


def evaluate(stage: str, model: nn.Module, test_loader: DataLoader, dummy_input: torch.Tensor,
             args: argparse.Namespace) -> None:
    """Print parameters, FLOPs, clean accuracy and PGD accuracy (torchattacks, eval mode) on the test set."""
    pgd = f"pgd{args.pgd_steps}"
    result = evaluate_robustness(model, test_loader, ("clean", pgd), eps=args.eps, seed=args.seed)
    print(f"{stage:<10} params {count_params(model):>9,}  FLOPs {count_flops(model, dummy_input):>11,}  "
          f"clean acc {result['clean']['accuracy']:6.2%}  PGD-{args.pgd_steps} acc {result[pgd]['accuracy']:6.2%}",
          flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train_set = load_dataset("fashion_mnist", train=True, subset=args.train_subset, seed=args.seed)
    test_set = load_dataset("fashion_mnist", train=False, subset=args.test_subset, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=250)

    model = build_model("small_cnn", num_classes=10, in_channels=1).to(device)
    dummy_input = torch.rand(1, 1, 28, 28).to(device)
    train(model, train_loader, args.epochs, args)
    evaluate("dense", model, test_loader, dummy_input, args)

    # MRSPruner's sparse_ratio is the global fraction of FLOPs to remove (L1NormPruner's: of each layer's channels);
    # it groups dependent layers itself and never prunes the classifier's output layer. By default every unit gets
    # the same ratio and the channels go by adversarial Taylor importance (chosen on validation, BENCHMARKS.md);
    # add tau=1.0 to allocate the ratios by module robustness sensitivity.
    config_list = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": args.sparsity}]
    pruner = MRSPruner(model, config_list, calibration=train_loader, eps=args.eps, dummy_input=dummy_input,
                       n_samples=256, attack_kwargs={"steps": args.pgd_steps}, progress=False)

    _, masks = pruner.compress()
    pruner.unwrap_model()
    model = ModelSpeedup(model, dummy_input, masks).speedup_model()
    evaluate("pruned", model, test_loader, dummy_input, args)

    train(model, train_loader, args.finetune_epochs, args)
    evaluate("finetuned", model, test_loader, dummy_input, args)


if __name__ == "__main__":
    main()
