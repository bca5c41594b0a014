"""Training: ``loop`` (one epoch, natural training), ``trainer`` (adversarial objectives and NNI
``TorchEvaluator`` hooks), ``fit`` (resumable fine-tuning with validation), ``distributed`` (torchrun/DDP)."""
