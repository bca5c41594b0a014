"""NNI 3.0's pruning quick start, offline (see models.py): a LeNet on Fashion-MNIST pruned by L1NormPruner,
every layer but the classifier, then sped up and fine-tuned."""
import torch
import torch.nn.functional as F
from torch import nn

from models import prepare_dataloader, prepare_optimizer, train, training_step, evaluate, robust_accuracy, device, EPOCHS

from nni.compression.pruning import L1NormPruner
from nni.compression.speedup import ModelSpeedup


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, 1)
        self.conv2 = nn.Conv2d(6, 16, 5, 1)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


if __name__ == '__main__':
    torch.manual_seed(0)
    model = LeNet().to(device)
    optimizer = prepare_optimizer(model)
    train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=EPOCHS)
    _, test_loader = prepare_dataloader()
    print('Original model paramater number: ', sum([param.numel() for param in model.parameters()]))
    print('Original model acc: ', evaluate(model, test_loader), '%, PGD-20 acc: ', robust_accuracy(model, test_loader), '%')

    config_list = [{
        'op_types': ['Linear', 'Conv2d'],
        'exclude_op_names': ['fc3'],
        'sparse_ratio': 0.5
    }]
    dummy_input = torch.rand(8, 1, 28, 28).to(device)

    pruner = L1NormPruner(model, config_list)
    _, masks = pruner.compress()
    pruner.unwrap_model()

    model = ModelSpeedup(model, dummy_input, masks).speedup_model()
    print('Pruned model paramater number: ', sum([param.numel() for param in model.parameters()]))
    print('Pruned model without finetuning acc: ', evaluate(model, test_loader), '%')

    optimizer = prepare_optimizer(model)
    train(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=EPOCHS)
    print('Pruned model after finetuning acc: ', evaluate(model, test_loader), '%, PGD-20 acc: ', robust_accuracy(model, test_loader), '%')
