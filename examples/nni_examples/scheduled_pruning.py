"""NNI 3.0's examples/compression/pruning/scheduled_pruning.py, offline (see models.py): a Taylor sub-pruner
under AGP (or linear) scheduling grows the sparsity during training, then the channels are removed."""
import sys

import torch

from models import (build_resnet18, prepare_dataloader, prepare_optimizer, train, training_step, evaluate,
                    robust_accuracy, device, EPOCHS)

from nni.compression import TorchEvaluator
from nni.compression.pruning import TaylorPruner, LinearPruner, AGPPruner
from nni.compression.utils import auto_set_denpendency_group_ids
from nni.compression.speedup import ModelSpeedup

schedule_type = sys.argv[1] if len(sys.argv) > 1 else 'agp'


if __name__ == '__main__':
    model = build_resnet18()
    optimizer = prepare_optimizer(model)
    train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=EPOCHS)
    _, test_loader = prepare_dataloader()
    print('Original model paramater number: ', sum([param.numel() for param in model.parameters()]))
    print('Original model acc: ', evaluate(model, test_loader), '%, PGD-20 acc: ', robust_accuracy(model, test_loader), '%')

    config_list = [{
        'op_types': ['Conv2d'],
        'sparse_ratio': 0.5
    }]
    dummy_input = torch.rand(8, 1, 28, 28).to(device)
    config_list = auto_set_denpendency_group_ids(model, config_list, dummy_input)
    optimizer = prepare_optimizer(model)
    evaluator = TorchEvaluator(train, optimizer, training_step)

    sub_pruner = TaylorPruner(model, config_list, evaluator, training_steps=2)
    if schedule_type == 'agp':
        scheduled_pruner = AGPPruner(sub_pruner, interval_steps=2, total_times=4)
    else:
        scheduled_pruner = LinearPruner(sub_pruner, interval_steps=2, total_times=4)

    _, masks = scheduled_pruner.compress(max_steps=2 * 4, max_epochs=None)
    scheduled_pruner.unwrap_model()

    model = ModelSpeedup(model, dummy_input, masks).speedup_model()
    print('Pruned model paramater number: ', sum([param.numel() for param in model.parameters()]))
    print('Pruned model without finetuning acc: ', evaluate(model, test_loader), '%')

    optimizer = prepare_optimizer(model)
    train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=EPOCHS)
    print('Pruned model after finetuning acc: ', evaluate(model, test_loader), '%, PGD-20 acc: ', robust_accuracy(model, test_loader), '%')
