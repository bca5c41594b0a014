"""Dense against MRS-pruned models: params and FLOPs (counted), latency and throughput, speedup against FLOPs ratio.

For each model and FLOPs target, MRSPruner allocates the per-layer ratios by MRS (FLOPs budget, ``--tau 1``; Conv2d
and Linear selected, as in the pipeline; ``--tau 0``: uniform ratios, the pruner's default) and ``speedup_model``
removes the channels with NNI's ModelSpeedup, whose own wall-clock time is reported. Then, for the dense and each
pruned model, on every device, batch and dtype: the median forward latency of ``--runs`` passes after ``--warmup``
passes (``metrics.measure_latency``: CUDA events on GPU), throughput = batch / latency, speedup = dense latency /
pruned latency, FLOPs ratio = dense / pruned FLOPs (counted at batch 1 by ``torch.utils.flop_counter``), and
efficiency = speedup / FLOPs ratio (goal on CUDA at batch 256: >= 0.7). Full measurement (writes speedup.json,
prints a Markdown table):

    python benchmarks/speedup.py --models resnet18 vgg16_bn mobilenet_v2 --targets 0.5 0.75 0.9 \
        --devices cpu cuda --batches 1 256 --dtypes fp32 bf16 --runs 20 --warmup 5 --out speedup.json

Weights are random init (seeded) and calibration is a seeded random batch in [0, 1]: the allocation is what MRS
chooses for those weights. Speed depends only on the resulting shapes, not on the values. Input is CIFAR-shaped
(3x32x32, 10 classes). bf16 casts the whole model and input with ``.to(torch.bfloat16)`` (pure bf16 inference,
no autocast); fp32 on CUDA uses PyTorch's default TF32 setting for convolutions, recorded in the JSON. cuDNN
autotuning is on (``cudnn.benchmark``): the warm-up passes absorb it. Pruning and ModelSpeedup run on CUDA when
it is among ``--devices``, else on the CPU.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from nni_mrs_plugin.checkpoint import atomic_json
from nni_mrs_plugin.evaluate import count_flops, count_params, measure_latency
from nni_mrs_plugin.models import MODELS, build_model
from nni_mrs_plugin.mrs.pruner import MRSPruner
from nni_mrs_plugin.mrs.sensitivity import ESTIMATORS
from nni_mrs_plugin.host.speedup import speedup_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GOAL = {"device": "cuda", "batch": 256, "min_efficiency": 0.7}


def target(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"target must be in (0, 1) (the fraction of FLOPs removed), got {text}")
    return value


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value
    parse.__name__ = "integer"  # argparse's "invalid integer value: 'x'"
    return parse


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16_bn", "mobilenet_v2"],
                        choices=sorted(MODELS), metavar="MODEL", help=f"any of {', '.join(sorted(MODELS))}")
    parser.add_argument("--targets", nargs="+", type=target, default=[0.5, 0.75, 0.9],
                        help="fractions of FLOPs removed, each in (0, 1)")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="default: cpu, plus cuda when available")
    parser.add_argument("--batches", nargs="+", type=_at_least(1), default=[1, 256])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--runs", type=_at_least(1), default=20, help="timed passes; the median is reported")
    parser.add_argument("--warmup", type=_at_least(0), default=5)
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="taylor", help="MRS estimator")
    parser.add_argument("--tau", type=float, default=1.0,
                        help="power-rule exponent: 1 allocates by MRS (the recorded tables); 0 is MRSPruner's "
                             "default, uniform ratios without measuring MRS")
    parser.add_argument("--samples", type=_at_least(1), default=128, help="MRS calibration samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="speedup.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for key in ("models", "targets", "devices", "batches", "dtypes"):  # a repeated value would repeat rows
        if getattr(args, key) is not None:
            setattr(args, key, list(dict.fromkeys(getattr(args, key))))
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device on this machine (torch.cuda.is_available() is False)")
    return args


def _run(command: List[str]) -> Optional[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(devices: List[str]) -> Dict[str, Any]:
    lscpu = _run(["lscpu"]) or ""
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
               platform.processor() or platform.machine())
    info = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}
    if "cuda" in devices:
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return info


def timings(model: nn.Module, shape: tuple, args: argparse.Namespace) -> Dict[tuple, float]:
    """(device, batch, dtype) -> median latency in ms."""
    result = {}
    for device in args.devices:
        for dtype in args.dtypes:
            copied = copy.deepcopy(model).to(device=device, dtype=DTYPES[dtype])
            for batch in args.batches:
                x = torch.rand(batch, *shape, device=device, dtype=DTYPES[dtype])
                result[device, batch, dtype] = measure_latency(copied, x, warmup=args.warmup, runs=args.runs)
    return result


def rows_for(name: str, target: Optional[float], model: nn.Module, shape: tuple, args: argparse.Namespace,
             dense: Optional[Dict[str, Any]] = None, **extra: Any) -> List[Dict[str, Any]]:
    model = model.to("cpu").eval()
    flops, params = count_flops(model, torch.rand(1, *shape)), count_params(model)
    rows = []
    for (device, batch, dtype), latency in timings(model, shape, args).items():
        row = {"model": name, "target": target, "params": params, "flops": flops, "device": device, "batch": batch,
               "dtype": dtype, "latency_ms": latency, "throughput_per_s": batch / (latency / 1000.0), **extra}
        if dense is not None:
            reference = next(r for r in dense if (r["device"], r["batch"], r["dtype"]) == (device, batch, dtype))
            row["speedup"] = reference["latency_ms"] / latency
            row["flops_ratio"] = reference["flops"] / flops
            row["efficiency"] = row["speedup"] / row["flops_ratio"]
            if (device, batch) == (GOAL["device"], GOAL["batch"]):
                row["goal_met"] = row["efficiency"] >= GOAL["min_efficiency"]
        rows.append(row)
    return rows


def prune(model: nn.Module, target: float, shape: tuple, device: str, args: argparse.Namespace) -> Dict[str, Any]:
    """MRS masks for ``target``, then ModelSpeedup (timed) on ``model`` in place."""
    model.to(device)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.samples, *shape, generator=generator).to(device)
    y = torch.randint(0, 10, (args.samples,), generator=generator).to(device)
    dummy = x[:1]
    config_list = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": target}]
    pruner = MRSPruner(model, config_list, calibration=(x, y), estimator=args.estimator, tau=args.tau,
                       budget="flops", dummy_input=dummy, n_samples=args.samples, seed=args.seed, progress=False)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    speedup_model(model, masks, dummy)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"speedup_seconds": time.perf_counter() - started, "predicted_removed": pruner.allocation.achieved,
            "prune_device": device}


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | target | params | FLOPs | device | batch | dtype | latency ms | throughput/s | speedup "
             "| FLOPs ratio | efficiency | ModelSpeedup s |", "|" + "---|" * 13]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], "dense" if r["target"] is None else f"{r['target']:g}", f"{r['params'] / 1e6:.2f}M",
            f"{r['flops'] / 1e6:.1f}M", r["device"], str(r["batch"]), r["dtype"], f"{r['latency_ms']:.3f}",
            f"{r['throughput_per_s']:.1f}", _cell(r.get("speedup"), ".2f"), _cell(r.get("flops_ratio"), ".2f"),
            _cell(r.get("efficiency"), ".2f"), _cell(r.get("speedup_seconds"), ".1f")]) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.backends.cudnn.benchmark = True
    prune_device = "cuda" if "cuda" in args.devices else "cpu"
    shape = (3, 32, 32)
    result = {"command": shlex.join(["python", "benchmarks/speedup.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "git_commit": _run(["git", "rev-parse", "--short", "HEAD"]), "machine": machine_info(args.devices),
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "no_progress")},
              "goal": GOAL, "rows": []}
    bar = tqdm(total=len(args.models) * len(args.targets), desc="speedup", disable=args.no_progress)
    for name in args.models:
        torch.manual_seed(args.seed)
        dense_model = build_model(name, num_classes=10, in_channels=3,
                                  **({"image_size": 32} if name == "small_cnn" else {})).eval()
        dense = rows_for(name, None, dense_model, shape, args)
        result["rows"] += dense
        for target in args.targets:
            bar.set_postfix_str(f"{name} {target:g}")
            model = copy.deepcopy(dense_model)
            extra = prune(model, target, shape, prune_device, args)
            result["rows"] += rows_for(name, target, model, shape, args, dense, **extra)
            bar.update()
    bar.close()
    print(markdown(result["rows"]))
    atomic_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
