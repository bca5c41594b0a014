"""NNI 3.0's pruning quick start model (a LeNet with F.max_pool2d(x, 2)), pruned by L1NormPruner and sped up."""
import sys
from pathlib import Path

import torch
from nni.compression.pruning import L1NormPruner
from nni.compression.speedup import ModelSpeedup

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "nni_examples"))
from quickstart_pruning import LeNet  # noqa: E402  (the example's model: F.max_pool2d(x, 2))


model = LeNet().eval()
config_list = [{"op_types": ["Linear", "Conv2d"], "exclude_op_names": ["fc3"], "sparse_ratio": 0.5}]
pruner = L1NormPruner(model, config_list)
_, masks = pruner.compress()
pruner.unwrap_model()
ModelSpeedup(model, torch.rand(3, 1, 28, 28), masks).speedup_model()
print("params", sum(p.numel() for p in model.parameters()))
