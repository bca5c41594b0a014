# An NNI 3.0 pruning script in the shape of NNI's examples/compression/pruning/norm_pruning.py.
# It never imports nni_mrs_plugin: it must run unchanged once the plugin is installed.
import sys

import torch
import torchvision

from nni.compression.pruning import L1NormPruner, L2NormPruner, FPGMPruner
from nni.compression.utils import auto_set_denpendency_group_ids
from nni.compression.speedup import ModelSpeedup

prune_type = sys.argv[1] if len(sys.argv) > 1 else 'l1'

if __name__ == '__main__':
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    print('Original model paramater number: ', sum([param.numel() for param in model.parameters()]))

    config_list = [{
        'op_types': ['Conv2d'],
        'sparse_ratio': 0.5
    }]
    dummy_input = torch.rand(2, 3, 64, 64)
    config_list = auto_set_denpendency_group_ids(model, config_list, dummy_input)

    if prune_type == 'l1':
        pruner = L1NormPruner(model, config_list)
    elif prune_type == 'l2':
        pruner = L2NormPruner(model, config_list)
    else:
        pruner = FPGMPruner(model, config_list)

    _, masks = pruner.compress()
    pruner.unwrap_model()

    model = ModelSpeedup(model, dummy_input, masks).speedup_model()
    print('Pruned model paramater number: ', sum([param.numel() for param in model.parameters()]))
    print('output shape: ', tuple(model(dummy_input).shape))
