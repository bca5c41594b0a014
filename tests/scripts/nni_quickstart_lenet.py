"""NNI 3.0's pruning quick start model (a LeNet with F.max_pool2d(x, 2)), pruned by L1NormPruner and sped up."""
import torch
import torch.nn.functional as F
from nni.compression.pruning import L1NormPruner
from nni.compression.speedup import ModelSpeedup
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, 1)
        self.conv2 = nn.Conv2d(6, 16, 5, 1)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # stride None: torch runs torch.jit.annotate(list[int], [])
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


model = LeNet().eval()
config_list = [{"op_types": ["Linear", "Conv2d"], "exclude_op_names": ["fc3"], "sparse_ratio": 0.5}]
pruner = L1NormPruner(model, config_list)
_, masks = pruner.compress()
pruner.unwrap_model()
ModelSpeedup(model, torch.rand(3, 1, 28, 28), masks).speedup_model()
print("params", sum(p.numel() for p in model.parameters()))
