"""The job's export: a run's model as a deployment artifact (``nni_mrs_plugin.deploy.export``), checked on the
config's test images at its attack radius; ``nni-mrs export`` and the job's ``export`` stage."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from . import build

__all__ = ["export_saved"]


def export_saved(config: Any, model: nn.Module, checkpoint: Union[str, Path], test_loader: Any, format: str = "onnx",
                 out: Union[str, Path, None] = None, samples: int = 64, **options: Any) -> Dict[str, Any]:
    """Export ``model`` (saved at ``checkpoint``) as ``format`` to ``out`` (default: beside the checkpoint, its
    suffix the format's). Verification runs on ``samples`` images of ``test_loader`` with their labels, unless the
    config's loaders normalise (the attack works on pixels in [0, 1]): then on uniform inputs labelled by the
    model."""
    from ..deploy import FORMATS, export

    info = build.dataset_info(config)
    example = torch.rand(1, info.in_channels, info.image_size, info.image_size)
    data: Optional[tuple] = None
    if build.normalization(config) is None and options.get("verify", True):
        images, labels = [], []
        for x, y in test_loader:
            images.append(x)
            labels.append(y)
            if sum(len(batch) for batch in images) >= samples:
                break
        data = (torch.cat(images)[:samples], torch.cat(labels)[:samples])
    path = Path(out) if out else Path(checkpoint).with_suffix(FORMATS.get(format, ""))
    return export(model, example, path, format, data=data, eps=build.eps(config, config.eval.eps), samples=samples,
                  **options)
