"""CLAM-SB (Lu et al. 2021, "Data-efficient and weakly supervised computational pathology on whole-slide
images"), single attention branch.

    embed:      Linear(D, E) -> ReLU -> Dropout                       h: (T, E)
    attention:  gated, as abmil-gated                                 s: (T,)   a = softmax(s)
    bag:        z = a @ h, logits = Linear(E, C)(z)                   (1, C)
    instances:  one Linear(E, 2) "cluster" classifier per class       (used by the loss only)
    scores:     a                                                     (T,)  attention weights

Instance-level clustering (training only): the k most attended tokens of the bag get pseudo-label 1 and
the k least attended get pseudo-label 0 for the classifier of the bag's class (in-class); for tasks with
more than two classes the k most attended tokens also get pseudo-label 0 for every other class's
classifier (out-of-class, CLAM's ``subtyping``), averaged over the classifiers used. Attention is
detached for the choice of the top / bottom k (a selection, as in the paper); the instance loss reaches
the embedding and the instance classifiers.

    loss = bag_weight * CE(bag) + (1 - bag_weight) * CE(instance pseudo-labels)

Defaults ``k = 8`` (capped at ``T // 2`` so that top and bottom never overlap) and ``bag_weight = 0.7``
(CLAM's defaults): the parameters ``clam_k`` / ``clam_bag_weight``, set through ``TrainConfig.extra``.
Cross-entropy instance loss (CLAM also offers a smooth-SVM loss; not implemented).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.abmil_gated import GatedABMIL
from trainer.models.base import TrainOutput, init_linear_xavier
from trainer.models.registry import register_model


@register_model("clam-sb")
class CLAMSB(GatedABMIL):
    loss_terms = ("ce", "inst")

    def __init__(self, in_dim: int, n_classes: int, *, clam_k: int = 8, clam_bag_weight: float = 0.7,
                 hidden_dim: int = 512, **kw):
        super().__init__(in_dim, n_classes, hidden_dim=hidden_dim, **kw)
        self.k = int(clam_k)
        self.bag_weight = float(clam_bag_weight)
        self.instance_classifiers = nn.ModuleList([nn.Linear(hidden_dim, 2) for _ in range(n_classes)])
        init_linear_xavier(self.instance_classifiers)

    def instance_loss(self, h: torch.Tensor, s: torch.Tensor, y: int) -> torch.Tensor | None:
        """Clustering loss on one bag: ``h`` (T, E), attention logits ``s`` (T,), bag class ``y``.

        Returns None when the bag is too small (T < 2) to hold a top and a bottom set.
        """
        k = min(self.k, h.shape[0] // 2)
        if k < 1:
            return None
        order = torch.argsort(s.detach(), descending=True)   # (T,)
        top, bottom = order[:k], order[-k:]
        ones, zeros = h.new_ones(k, dtype=torch.long), h.new_zeros(k, dtype=torch.long)
        # in-class: the bag's own classifier separates the most from the least attended tokens
        losses = [F.cross_entropy(self.instance_classifiers[y](h[torch.cat([top, bottom])]),
                                  torch.cat([ones, zeros]))]
        if self.n_classes > 2:                               # out-of-class (CLAM "subtyping")
            for c in range(self.n_classes):
                if c != y:
                    losses.append(F.cross_entropy(self.instance_classifiers[c](h[top]), zeros))
        return torch.stack(losses).mean()

    def train_forward(self, bag) -> TrainOutput:
        """``bag_weight * ce + (1 - bag_weight) * inst``; ``ce`` alone for a bag too small for ``inst``."""
        h = self.embed(self.tokens(bag))                      # (T, E)
        s = self.instance_cache(h)                            # (T,)
        out = self.head(h, s)
        ce = F.cross_entropy(out["logits"], bag.label.view(1))
        inst = self.instance_loss(h, s, int(bag.label))
        if inst is None:
            return TrainOutput.make(out["logits"], {"ce": ce})
        return TrainOutput.make(out["logits"], {"ce": ce, "inst": inst},
                                {"ce": self.bag_weight, "inst": 1.0 - self.bag_weight})
