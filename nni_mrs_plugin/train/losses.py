"""The training objectives on logits: TRADES, MART and the two robust distillations, RSLAD and ARD. Each KL term
is summed over classes and averaged over the batch (the divergence as defined; PyTorch's default ``mean`` would
also divide it by the class count)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["trades_loss", "mart_loss", "rslad_loss", "ard_loss", "kl"]


def kl(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(target / T) ‖ softmax(logits / T)), summed over classes, averaged over the batch."""
    return F.kl_div(F.log_softmax(logits.float() / temperature, dim=1),
                    F.softmax(target_logits.float() / temperature, dim=1), reduction="batchmean")


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x_adv)), the KL summed and divided by the
    batch size as in the reference ``trades.py``."""
    return F.cross_entropy(logits_nat.float(), y) + beta * kl(logits_adv, logits_nat)


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART (Wang et al. 2020), as in the reference ``mart.py``: boosted CE on x_adv (CE plus a margin term on the
    strongest wrong class) + beta * KL(f(x) || f(x_adv)) weighted by 1 - p_y(x), so misclassified clean
    examples count more."""
    logits_nat, logits_adv = logits_nat.float(), logits_adv.float()
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    boosted_ce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
    divergence = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    return boosted_ce + beta * (divergence * (1.0000001 - true_probs)).mean()


def rslad_loss(student_adv: torch.Tensor, student_nat: torch.Tensor, teacher_nat: torch.Tensor) -> torch.Tensor:
    """RSLAD (Zi et al. 2021): 5/6 KL(S(x_adv) ‖ T(x)) + 1/6 KL(S(x) ‖ T(x)), the teacher's clean prediction as
    the soft label of both, at temperature 1."""
    return 5 / 6 * kl(student_adv, teacher_nat) + 1 / 6 * kl(student_nat, teacher_nat)


def ard_loss(student_adv: torch.Tensor, student_nat: torch.Tensor, teacher_nat: torch.Tensor, y: torch.Tensor,
             temperature: float, weight: float) -> torch.Tensor:
    """ARD (Goldblum et al. 2020): weight · T² · KL(S(x_adv)/T ‖ T(x)/T) + (1 - weight) · CE(S(x), y)."""
    loss = weight * temperature ** 2 * kl(student_adv, teacher_nat, temperature)
    return loss + (1 - weight) * F.cross_entropy(student_nat.float(), y) if weight < 1 else loss
