"""The training attacks torchattacks lacks, as torchattacks attacks (so they run under the trainer's BatchNorm
mode, pixel space and autocast like the others):

- ``NFGSM`` (de Jorge et al. 2022): one FGSM step of ``alpha`` (default ε) from x + U(-k·ε, k·ε) noise (k = 2),
  not projected back to the ε-ball, only clipped to [0, 1]; its larger noise is what keeps single-step training
  from collapsing.
- ``TeacherKL`` (RSLAD, Zi et al. 2021): PGD from x + 0.001·N(0, 1) that maximises KL(S(x') ‖ T(x)), the student's
  divergence from the teacher's clean prediction; the call's second argument is the teacher's clean logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack

__all__ = ["NFGSM", "TeacherKL"]


class NFGSM(Attack):
    def __init__(self, model, eps: float = 8 / 255, alpha: float = None, noise: float = 2.0):
        super().__init__("NFGSM", model)
        self.eps, self.noise = eps, noise
        self.alpha = eps if alpha is None else alpha

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, labels = images.clone().detach().to(self.device), labels.clone().detach().to(self.device)
        start = images + torch.empty_like(images).uniform_(-self.noise * self.eps, self.noise * self.eps)
        start = start.clamp(0, 1).detach().requires_grad_(True)
        grad = torch.autograd.grad(F.cross_entropy(self.get_logits(start).float(), labels), start)[0]
        return (start.detach() + self.alpha * grad.sign()).clamp(0, 1).detach()


class TeacherKL(Attack):
    def __init__(self, model, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10):
        super().__init__("TeacherKL", model)
        self.eps, self.alpha, self.steps = eps, alpha, steps

    def forward(self, images: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        target = F.softmax(teacher_logits.detach().float().to(self.device), dim=1)
        adv = (images + 0.001 * torch.randn_like(images)).clamp(0, 1).detach()
        for _ in range(self.steps):
            adv.requires_grad_(True)
            divergence = F.kl_div(F.log_softmax(self.get_logits(adv).float(), dim=1), target, reduction="sum")
            grad = torch.autograd.grad(divergence, adv)[0]
            adv = adv.detach() + self.alpha * grad.sign()
            adv = (images + (adv - images).clamp(-self.eps, self.eps)).clamp(0, 1).detach()
        return adv
