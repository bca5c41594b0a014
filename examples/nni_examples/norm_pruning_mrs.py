"""norm_pruning.py with MRS: per-unit ratios from robustness sensitivity that remove half of the FLOPs, the
norm criterion inside each unit, and PGD adversarial training throughout."""
import sys

import torch

from models import (build_resnet18, prepare_dataloader, prepare_optimizer, train, training_step, evaluate,
                    robust_accuracy, device, EPOCHS)

from nni.compression.pruning import MRSPruner  # registered by nni_mrs_plugin
from nni_mrs_plugin import AdversarialTrainer
from nni.compression.utils import auto_set_denpendency_group_ids
from nni.compression.speedup import ModelSpeedup

training_step = AdversarialTrainer('pgd', eps=0.1, steps=2).training_step  # PGD adversarial training

prune_type = sys.argv[1] if len(sys.argv) > 1 else 'l1'


if __name__ == '__main__':
    model = build_resnet18()
    optimizer = prepare_optimizer(model)
    train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=EPOCHS)
    train_loader, test_loader = prepare_dataloader()
    print('Original model paramater number: ', sum([param.numel() for param in model.parameters()]))
    print('Original model acc: ', evaluate(model, test_loader), '%, PGD-20 acc: ', robust_accuracy(model, test_loader), '%')

    config_list = [{
        'op_types': ['Conv2d'],
        'sparse_ratio': 0.5
    }]
    dummy_input = torch.rand(8, 1, 28, 28).to(device)
    config_list = auto_set_denpendency_group_ids(model, config_list, dummy_input)
    optimizer = prepare_optimizer(model)

    if prune_type == 'l1':
        pruner = MRSPruner(model, config_list, calibration=train_loader, dummy_input=dummy_input, criterion='l1')
    elif prune_type == 'l2':
        pruner = MRSPruner(model, config_list, calibration=train_loader, dummy_input=dummy_input, criterion='l2')
    else:
        pruner = MRSPruner(model, config_list, calibration=train_loader, dummy_input=dummy_input, criterion='fpgm')

    _, masks = pruner.compress()
    pruner.unwrap_model()

    model = ModelSpeedup(model, dummy_input, masks).speedup_model()
    print('Pruned model paramater number: ', sum([param.numel() for param in model.parameters()]))
    print('Pruned model without finetuning acc: ', evaluate(model, test_loader), '%')

    optimizer = prepare_optimizer(model)
    train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=EPOCHS)
    print('Pruned model after finetuning acc: ', evaluate(model, test_loader), '%, PGD-20 acc: ', robust_accuracy(model, test_loader), '%')
