"""Dense against pruned models by deployment backend: latency, speedup in the same backend and end to end, against
the FLOPs ratio and against the roofline bound.

For each model, FLOPs target and ``--round-to`` N, MRSPruner (``--tau``; Conv2d and Linear selected, as in the job)
prunes a copy of the dense model keeping multiples of N channels, and ``speedup_model`` removes them (its own time
is reported). Then, per device, backend, dtype and batch, the dense model and every pruned one are timed in one
process, interleaved (one pass of each in turn, ``--runs`` rounds after ``--warmup``; the median): backends
``eager`` (NCHW, as ModelSpeedup returns it), ``folded`` (BatchNorm folded, channels_last), ``compile``
(``torch.compile``, inductor with freezing), ``onnx`` (ONNX Runtime), ``openvino`` (OpenVINO; its bf16 is the
runtime's precision hint) on CPU; ``eager``, ``folded`` and ``cudagraphs`` (``torch.compile(mode=
"reduce-overhead")``) on CUDA. Columns: speedup over the dense model in the same backend, over the dense model in
eager PyTorch (what a user gets end to end), that speedup / FLOPs ratio, and / the roofline bound
(``nni_mrs_plugin.roofline``: as run for eager, fused for the others, with the device's constants calibrated at
the start and recorded).

    python benchmarks/speedup.py --models resnet18 vgg16_bn mobilenet_v2 --targets 0.5 0.75 0.9 --round-to 1 8 16 \
        --backends eager folded compile onnx openvino --batches 1 256 --dtypes fp32 --out speedup.json

Weights are random (seeded), calibration a seeded random batch: speed depends on shapes only. CIFAR models take
3x32x32; torchvision's ``mobilenet_v3_small`` and ``regnet_x_400mf`` take 3x224x224 (10 classes). The CPU's model,
flags and thread count go into the JSON.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from nni_mrs_plugin.checkpoint import atomic_json
from nni_mrs_plugin.deploy import export, fold_batchnorm, load_artifact
from nni_mrs_plugin.evaluate import count_flops, count_params
from nni_mrs_plugin.models import MODELS, build_model
from nni_mrs_plugin.mrs.pruner import MRSPruner
from nni_mrs_plugin.roofline import calibrate, latency_bound
from nni_mrs_plugin.host.speedup import speedup_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TORCHVISION = {"mobilenet_v3_small": 224, "regnet_x_400mf": 224}
BACKENDS = {"cpu": ("eager", "folded", "compile", "onnx", "openvino"), "cuda": ("eager", "folded", "cudagraphs")}


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


def round_to_arg(text: str) -> Union[int, str]:
    """``--round-to``: an integer >= 1 or 'auto' (each unit its own step)."""
    return text if text == "auto" else _at_least(1)(text)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = sorted(MODELS) + sorted(TORCHVISION)
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16_bn", "mobilenet_v2"], choices=names,
                        metavar="MODEL", help=f"any of {', '.join(names)}")
    parser.add_argument("--targets", nargs="+", type=target, default=[0.5, 0.75, 0.9],
                        help="fractions of FLOPs removed, each in (0, 1)")
    parser.add_argument("--round-to", nargs="+", type=round_to_arg, default=[1],
                        help="channel multiples, or auto (default: 1)")
    parser.add_argument("--devices", nargs="+", choices=sorted(BACKENDS), default=None,
                        help="default: cpu, plus cuda when available")
    parser.add_argument("--backends", nargs="+", default=["eager"], choices=sorted({*BACKENDS["cpu"],
                        *BACKENDS["cuda"]}), help="default: eager; each runs on the devices it exists for")
    parser.add_argument("--batches", nargs="+", type=_at_least(1), default=[1, 256])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32"])
    parser.add_argument("--runs", type=_at_least(1), default=20, help="timed rounds; the median is reported")
    parser.add_argument("--warmup", type=_at_least(0), default=5)
    parser.add_argument("--tau", type=float, default=1.0, help="power-rule exponent (1: allocate by MRS; 0: uniform)")
    parser.add_argument("--samples", type=_at_least(1), default=128, help="MRS calibration samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="speedup.json")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--summarize", nargs="+", metavar="JSON", default=None,
                        help="measure nothing: write the tables of these finished runs to --out (a summary.json)")
    args = parser.parse_args(argv)
    for key in ("models", "targets", "round_to", "devices", "backends", "batches", "dtypes"):
        if getattr(args, key) is not None:  # a repeated value would repeat rows
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
    lscpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in (_run(["lscpu"]) or "").splitlines())}
    flags = set(lscpu.get("Flags", "").split())
    info = {"cpu": lscpu.get("Model name") or platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
                                         "fma", "neon", "asimd"})}
    if "cuda" in devices:
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return info


def build(name: str, seed: int) -> tuple:
    """(dense model, input shape) of a benchmark model."""
    torch.manual_seed(seed)
    if name in TORCHVISION:
        import torchvision

        side = TORCHVISION[name]
        return getattr(torchvision.models, name)(num_classes=10).eval(), (3, side, side)
    extra = {"image_size": 32} if name == "small_cnn" else {}
    return build_model(name, num_classes=10, in_channels=3, **extra).eval(), (3, 32, 32)


def prune(model: nn.Module, target: float, round_to: Union[int, str], shape: tuple, device: str,
          args: argparse.Namespace) -> Dict[str, Any]:
    """MRS masks for ``target`` (multiples of ``round_to`` kept), then ModelSpeedup (timed) on ``model`` in place."""
    model.to(device)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.samples, *shape, generator=generator).to(device)
    y = torch.randint(0, 10, (args.samples,), generator=generator).to(device)
    pruner = MRSPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": target}], calibration=(x, y),
                       tau=args.tau, budget="flops", dummy_input=x[:1], n_samples=args.samples, seed=args.seed,
                       round_to=round_to, progress=False)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    started = time.perf_counter()
    speedup_model(model, masks, x[:1])
    if device == "cuda":
        torch.cuda.synchronize()
    return {"speedup_seconds": time.perf_counter() - started, "predicted_removed": pruner.allocation.achieved}


def runner(model: nn.Module, backend: str, device: str, dtype: torch.dtype, example: torch.Tensor,
           folder: Path) -> Optional[Callable[[torch.Tensor], Any]]:
    """A callable running ``model`` in ``backend``; None where the backend has no such dtype."""
    model = copy.deepcopy(model).cpu().eval()
    if backend == "eager":
        model = model.to(device=device, dtype=dtype)
        return lambda x: model(x)
    if backend in ("onnx", "openvino"):
        if backend == "onnx" and dtype != torch.float32:
            return None
        path = folder / f"{id(model)}.{'xml' if backend == 'openvino' else 'onnx'}"
        export(model, example, path, backend, verify=False)
        artifact = load_artifact(path, backend, dtype)
        return lambda x: artifact(x.float().cpu())
    folded = fold_batchnorm(model, example).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    import torch._dynamo.config as dynamo

    # every variant of a model shares its forward's code: each is a recompile, and past the limit dynamo would
    # silently run the rest eagerly
    dynamo.recompile_limit = dynamo.accumulated_recompile_limit = 4096
    if backend == "compile":
        import torch._inductor.config as inductor

        inductor.freezing = True
        folded = torch.compile(folded)
    elif backend == "cudagraphs":
        folded = torch.compile(folded, mode="reduce-overhead")
    return lambda x: folded(x.contiguous(memory_format=torch.channels_last))


@torch.no_grad()
def interleaved(calls: Dict[Any, Callable[[], Any]], warmup: int, runs: int, cuda: bool) -> Dict[Any, float]:
    """Median milliseconds of each call, timed in turn, one pass of each per round."""
    times: Dict[Any, List[float]] = {key: [] for key in calls}
    for round_ in range(warmup + runs):
        for key, call in calls.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            if cuda:
                torch.cuda.synchronize()
            if round_ >= warmup:
                times[key].append((time.perf_counter() - start) * 1000.0)
    return {key: statistics.median(values) for key, values in times.items()}


def measure(name: str, variants: Dict[Any, nn.Module], shape: tuple, constants: Dict[str, Any],
            args: argparse.Namespace, folder: Path) -> List[Dict[str, Any]]:
    """Rows for the dense model (key None) and every pruned variant ((target, round_to)), per device, backend,
    dtype and batch."""
    dense, example = variants[None], torch.rand(1, *shape)
    flops = {key: count_flops(model, example) for key, model in variants.items()}
    rows, eager, bounds = [], {}, {}
    for device in args.devices:
        for backend in [b for b in args.backends if b in BACKENDS[device]]:
            for dtype in args.dtypes:
                runners = {key: runner(model, backend, device, DTYPES[dtype], example, folder)
                           for key, model in variants.items()}
                if runners[None] is None:
                    continue
                for batch in args.batches:
                    x = torch.rand(batch, *shape, device=device, dtype=DTYPES[dtype])
                    latency = interleaved({key: (lambda r=r: r(x)) for key, r in runners.items()}, args.warmup,
                                          args.runs, device == "cuda")
                    if backend == "eager":
                        eager[device, dtype, batch] = latency[None]
                    for key, model in variants.items():
                        row = {"model": name, "target": None if key is None else key[0],
                               "round_to": None if key is None else key[1], "device": device, "backend": backend,
                               "dtype": dtype, "batch": batch, "latency_ms": latency[key], "flops": flops[key],
                               "params": count_params(model)}
                        if key is not None:
                            if (device, key, batch) not in bounds:
                                bounds[device, key, batch] = latency_bound(dense, model, torch.rand(batch, *shape),
                                                                           constants[device])
                            bound = bounds[device, key, batch]
                            row.update(speedup=latency[None] / latency[key], flops_ratio=flops[None] / flops[key],
                                       bound=bound["as_run" if backend == "eager" else "fused"],
                                       speedup_vs_eager=(eager[device, dtype, batch] / latency[key]
                                                         if (device, dtype, batch) in eager else None))
                            row["per_flops_ratio"] = row["speedup"] / row["flops_ratio"]
                            row["per_bound"] = row["speedup"] / row["bound"]
                        rows.append(row)
    return rows


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | target | round_to | device | backend | dtype | batch | latency ms | speedup | vs dense eager "
             "| / FLOPs ratio | bound | / bound |", "|" + "---|" * 13]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], "dense" if r["target"] is None else f"{r['target']:g}", _cell(r["round_to"], ""),
            r["device"], r["backend"], r["dtype"], str(r["batch"]), f"{r['latency_ms']:.3f}",
            _cell(r.get("speedup"), ".2f"), _cell(r.get("speedup_vs_eager"), ".2f"),
            _cell(r.get("per_flops_ratio"), ".2f"), _cell(r.get("bound"), ".2f"), _cell(r.get("per_bound"), ".2f")])
            + " |")
    return "\n".join(lines)


def summary_run(result: Dict[str, Any]) -> Dict[str, Any]:
    """One run's table for BENCHMARKS.md: per model, target and round_to, each backend's speedup over its own
    dense model, then (over the dense model in eager PyTorch; / the roofline bound); dense rows in ms."""
    rows, machine, settings = result["rows"], result["machine"], result["settings"]
    device = "cpu" if "cpu" in settings["devices"] else settings["devices"][0]
    constants = result["device_constants"].get(device, {})
    cells = sorted({(r["device"], r["backend"], r["dtype"], r["batch"]) for r in rows},
                   key=lambda c: (c[0], settings["backends"].index(c[1]), c[2], c[3]))
    table = []
    for key in dict.fromkeys((r["model"], r["target"], r["round_to"]) for r in rows):
        found = {(r["device"], r["backend"], r["dtype"], r["batch"]): r for r in rows
                 if (r["model"], r["target"], r["round_to"]) == key}
        if key[1] is None:
            table.append([key[0], "dense", "–", *(f"{found[c]['latency_ms']:.2f} ms" for c in cells)])
            continue
        first = next(iter(found.values()))
        table.append([key[0], f"{key[1]:g} ({first['flops_ratio']:.2f})", key[2], *(
            f"{found[c]['speedup']:.2f}× ({_cell(found[c]['speedup_vs_eager'], '.2f')}×, {found[c]['per_bound']:.2f})"
            for c in cells)])
    single = lambda values: values[0] if len(set(values)) == 1 else None  # noqa: E731
    label = lambda c: " ".join(str(part) for part, common in zip(  # noqa: E731
        c, (single([x[0] for x in cells]), None, single([x[2] for x in cells]), single([x[3] for x in cells])))
        if common is None)
    gpu = f"{machine['gpu']} (CUDA {machine['cuda']}), host " if device == "cuda" else ""
    setting = (f"{gpu}{machine['cpu']} ({', '.join(machine['cpu_flags'])}), {machine['threads']} threads, torch "
               f"{machine['torch']}; {result['date'][:10]}, commit {result['git_commit']}; calibrated P = "
               f"{constants.get('flops_per_s', 0) / 1e9:.0f} GFLOP/s, W = {constants.get('bytes_per_s', 0) / 1e9:.1f} "
               f"GB/s, tau = {constants.get('overhead_s', 0) * 1e6:.2f} µs; machine otherwise idle")
    return {"label": f"{', '.join(settings['devices'])}, batch {', '.join(map(str, settings['batches']))}, "
                     f"{', '.join(settings['dtypes'])}", "setting": setting, "command": result["command"],
            "columns": ["model", "target (FLOPs ratio)", "round_to", *map(label, cells)], "rows": table,
            "caption": "Each cell: speedup over the dense model in the same backend (over the dense model in eager "
                       "PyTorch; speedup / roofline bound). Dense rows: latency."}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.summarize:
        import json

        summary = {"runs": [summary_run(json.loads(Path(path).read_text())) for path in args.summarize]}
        atomic_json(args.out, summary)
        return summary
    torch.backends.cudnn.benchmark = True
    prune_device = "cuda" if "cuda" in args.devices else "cpu"
    constants = {device: calibrate(device) for device in args.devices}
    result = {"command": shlex.join(["python", "benchmarks/speedup.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "git_commit": _run(["git", "rev-parse", "--short", "HEAD"]), "machine": machine_info(args.devices),
              "device_constants": {device: vars(c) for device, c in constants.items()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "no_progress")}, "rows": []}
    bar = tqdm(total=len(args.models), desc="speedup", disable=args.no_progress)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            dense, shape = build(name, args.seed)
            variants, pruning = {None: dense}, {}
            for key in ((t, n) for t in args.targets for n in args.round_to):
                variants[key] = copy.deepcopy(dense)
                pruning[key] = prune(variants[key], *key, shape, prune_device, args)
                variants[key] = variants[key].cpu().eval()
            rows = measure(name, variants, shape, constants, args, Path(folder))
            for row in rows:
                row.update(pruning.get((row["target"], row["round_to"]), {}))
            result["rows"] += rows
            atomic_json(args.out, result)  # each finished model is kept if a later one is cut short
            bar.update()
    bar.close()
    print(markdown(result["rows"]))
    print(f"wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
