"""``nni-mrs`` command line (also ``python -m nni_mrs_plugin``).

``run``: the main job. For now it trains a model briefly, prunes it with NNI's L1NormPruner, removes the
channels with ModelSpeedup, fine-tunes, and prints dense vs pruned params, FLOPs, accuracy and latency.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .models import MODELS

    parser = argparse.ArgumentParser(prog="nni-mrs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, prune with NNI, remove channels, fine-tune, report")
    run.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    run.add_argument("--data-root", default=None, help="data folder (Fashion-MNIST: default system location)")
    run.add_argument("--model", default="small_cnn", choices=sorted(MODELS))
    run.add_argument("--sparsity", type=_ratio, default=0.5, help="fraction of conv channels to remove")
    run.add_argument("--epochs", type=_non_negative_int, default=1, help="dense training epochs")
    run.add_argument("--finetune-epochs", type=_non_negative_int, default=1)
    run.add_argument("--train-subset", type=_positive_int, default=20000, help="training samples (default 20000)")
    run.add_argument("--test-subset", type=_positive_int, default=None, help="test samples (default: all)")
    run.add_argument("--batch-size", type=_positive_int, default=128)
    run.add_argument("--lr", type=float, default=0.05)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--output", default="runs/foundation", help="folder for results.json and pruned.pt")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import atomic_write, save_pruned
    from .data import DATASETS, make_loaders
    from .metrics import accuracy, count_flops, count_params, measure_latency
    from .models import build_model
    from .speedup import remove_channels
    from .training import train_natural

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    info = DATASETS[args.dataset]
    train_loader, test_loader = make_loaders(args.dataset, args.data_root, args.batch_size, args.train_subset,
                                             args.test_subset, args.seed)
    model_kwargs = dict(num_classes=info.num_classes, in_channels=info.in_channels)
    if args.model == "small_cnn":
        model_kwargs["image_size"] = info.image_size
    model = build_model(args.model, **model_kwargs).to(device)
    progress = not args.no_progress
    started = time.time()

    train_natural(model, train_loader, args.epochs, args.lr, device=device, desc="train", progress=progress)
    dummy = torch.rand(1, info.in_channels, info.image_size, info.image_size, device=device)
    cpu_dummy = dummy.cpu()

    def measure(m: torch.nn.Module) -> dict:
        result = {"params": count_params(m), "flops": count_flops(m, dummy),
                  "accuracy": accuracy(m, test_loader, device)}
        cpu_model = m.to("cpu")
        result["cpu_latency_ms"] = measure_latency(cpu_model, cpu_dummy, warmup=5, runs=30)
        m.to(device)
        return result

    dense = measure(model)
    config_list = [{"op_types": ["Conv2d"], "sparse_ratio": args.sparsity}]
    model, _ = remove_channels(model, config_list, dummy)
    after_removal = accuracy(model, test_loader, device)
    train_natural(model, train_loader, args.finetune_epochs, args.lr / 5, device=device, desc="fine-tune",
                  progress=progress)
    pruned = measure(model)
    pruned["accuracy_before_finetune"] = after_removal

    out = Path(args.output)
    save_pruned(out / "pruned.pt", model.cpu(), args.model, **model_kwargs)
    results = {"config": vars(args), "device": str(device), "dense": dense, "pruned": pruned,
               "seconds": round(time.time() - started, 1)}
    atomic_write(out / "results.json", lambda f: f.write(json.dumps(results, indent=2).encode()))

    rows = [("params", "params", "{:,}"), ("FLOPs", "flops", "{:,}"), ("accuracy", "accuracy", "{:.2%}"),
            ("CPU latency (batch 1, ms)", "cpu_latency_ms", "{:.3f}")]
    print(f"\n{args.model} on {args.dataset}, {args.sparsity:.0%} of conv channels removed by NNI L1NormPruner "
          f"+ ModelSpeedup ({results['seconds']} s on {device})")
    print(f"{'':28}{'dense':>16}{'pruned':>16}{'ratio':>8}")
    for label, key, fmt in rows:
        ratio = pruned[key] / dense[key] if dense[key] else float("nan")
        print(f"{label:28}{fmt.format(dense[key]):>16}{fmt.format(pruned[key]):>16}{ratio:>8.2f}")
    print(f"accuracy right after removal, before fine-tuning: {after_removal:.2%}")
    print(f"results: {out / 'results.json'}  pruned model: {out / 'pruned.pt'} (load with nni_mrs_plugin.load_pruned)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from .data import DataNotFoundError

    try:
        if args.command == "run":
            return _run(args)
    except DataNotFoundError as err:
        print(f"nni-mrs: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nni-mrs: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
