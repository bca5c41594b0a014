"""NNI 3.0's examples/compression/pruning/taylor_pruning.py, offline (see models.py): TaylorPruner collects
gradients over a few training steps through a TorchEvaluator, then the channels are removed and fine-tuned."""
import torch

from models import (build_resnet18, prepare_dataloader, prepare_optimizer, train, training_step, evaluate,
                    robust_accuracy, device, EPOCHS)

from nni.compression import TorchEvaluator
from nni.compression.pruning import TaylorPruner
from nni.compression.utils import auto_set_denpendency_group_ids
from nni.compression.speedup import ModelSpeedup


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

    pruner = TaylorPruner(model, config_list, evaluator, training_steps=5)
    _, masks = pruner.compress()
    pruner.unwrap_model()

    model = ModelSpeedup(model, dummy_input, masks).speedup_model()
    print('Pruned model paramater number: ', sum([param.numel() for param in model.parameters()]))
    print('Pruned model without finetuning acc: ', evaluate(model, test_loader), '%')

    optimizer = prepare_optimizer(model)
    train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=EPOCHS)
    print('Pruned model after finetuning acc: ', evaluate(model, test_loader), '%, PGD-20 acc: ', robust_accuracy(model, test_loader), '%')
