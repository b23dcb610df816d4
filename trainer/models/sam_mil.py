"""SAM-MIL (paper 3.2-3.5, Algorithm 1) around a plain MIL backbone (default AB-MIL).

One training step on a bag of T tokens (N patches + S group tokens)::

    h = backbone.embed(x)                 (T, E)  embedded ONCE (one dropout sample) and reused below
    c = backbone.instance_cache(h)        (T,)    AB-MIL: attention logits, also computed once
    keep = SG2M(bag)                      (K,)    kept token ids (group tokens never masked)
    L_cls = CE(head(h[keep]), y)                  masked bag
    L_p   = mean_i CE(head(h[keep[P_i]]), y)      m pseudo-bags: random partition of the masked bag
    L_con = consistency(softmax attention of the full bag, segment of each patch)
    loss  = L_cls + alpha * L_p + beta * L_con    (eq. 13; every term back-propagates into the model)

Evaluation (``forward``) is the backbone on the full, unmasked bag with group tokens.
Differences from the reference code (see docs/trainer.md): the masked-bag CE is used (the reference
discards it), L_con acts on the trained model (the reference computes it on a frozen copy), group tokens
are really exempt from masking, and the pseudo-bags are cut from the masked bag (Algorithm 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.losses import consistency_loss
from trainer.masking import SG2M
from trainer.models.base import MILModel, TrainOutput
from trainer.models.registry import register_model
from trainer.pseudo_bags import pseudo_bag_indices


@register_model("sam-mil")
class SAMMIL(MILModel):
    uses_group_features_by_default = True
    uses_sg2m = True
    loss_terms = ("ce", "pb", "con", "inst_max")

    def __init__(self, in_dim: int, n_classes: int, *, backbone: MILModel, mask: str = "sam",
                 mask_ratio: float = 0.9, ratio_fn: str = "sigmoid", sigmoid_a: float = 2.0,
                 sigmoid_b: float = -2.0, area_unit: str = "relative-size", group_by: str = "segment",
                 mask_warmup: int = 0, pseudo_bags: int = 5, alpha: float = 0.5, beta: float = 0.0,
                 con_form: str = "within-share", con_unassigned: bool = False, **common):
        """SAM-MIL around ``backbone``; every setting has its TrainConfig field's name.

        Args:
            backbone: the plain MIL model trained (built by the registry from ``TrainConfig.backbone``).
            mask: SG2M mode; mask_ratio, ratio_fn, sigmoid_a, sigmoid_b, area_unit and group_by configure
                it (trainer/masking.py).
            mask_warmup: epochs over which MR_target ramps up linearly from 0 (epoch 0 trains on whole
                bags, epoch ``mask_warmup`` and later on MR_target); 0 = masking from the first step.
            pseudo_bags: m, the number of pseudo-bags.
            alpha: weight of the pseudo-bag term ``pb``.
            beta: weight of the consistency term ``con``; con_form and con_unassigned shape it
                (trainer/losses.py).
        """
        super().__init__(in_dim, n_classes, **common)
        self.backbone = backbone
        self.sg2m = SG2M(mask, mask_ratio, ratio_fn, sigmoid_a, sigmoid_b, area_unit, group_by)
        self.mask_warmup = int(mask_warmup)
        self.m, self.alpha, self.beta = pseudo_bags, alpha, beta
        self.con_form, self.con_unassigned = con_form, con_unassigned

    def attention_output_layers(self):
        return self.backbone.attention_output_layers()

    def embed(self, x):
        return self.backbone.embed(x)

    def instance_cache(self, h):
        return self.backbone.instance_cache(h)

    def instance_logits(self, h, cache=None):
        return self.backbone.instance_logits(h, cache)

    def head(self, h, cache=None):
        return self.backbone.head(h, cache)

    def mask_scale(self) -> float:
        """Share of MR_target applied in the current epoch: ``min(1, epoch / mask_warmup)``."""
        return 1.0 if self.mask_warmup <= 0 else min(1.0, self.epoch / self.mask_warmup)

    @staticmethod
    def _take(c, idx):
        return None if c is None else c[idx]

    def token_groups(self, bag, groups) -> torch.Tensor:
        """``(T,)`` consistency group per token: segment group for patches, -1 for excluded tokens."""
        g = groups.group_of_patch.clone()
        if not self.con_unassigned:
            g[~groups.is_segment[g]] = -1
        return torch.cat([g, g.new_full((self.n_group_tokens(bag),), -1)])

    def train_forward(self, bag) -> TrainOutput:
        """Terms ``ce`` (masked bag), ``pb`` (weight alpha), ``inst_max``, ``con`` (weight beta); eq. 13."""
        y = bag.label.view(1)
        x = self.tokens(bag)                                   # (T, D)
        h = self.embed(x)                                      # (T, E)
        c = self.instance_cache(h)                             # (T,) or None
        groups = self.sg2m.groups(bag)
        keep = self.sg2m(bag, self.n_group_tokens(bag), groups, self.mask_scale())   # (K,)

        parts = (pseudo_bag_indices(keep.numel(), self.m, device=keep.device)
                 if self.alpha > 0 and self.m > 1 else [])
        if self.backbone.attention_pooling:
            # masked bag and pseudo-bags in one (1 + m, T) x (T, E) product: no per-sub-bag gathers of h
            subsets = torch.zeros(1 + len(parts), h.shape[0], dtype=torch.bool, device=h.device)
            subsets[0, keep] = True
            for i, p in enumerate(parts):
                subsets[1 + i, keep[p]] = True
            logits = self.backbone.pool_subsets(h, c, subsets)    # (1 + m, C)
            masked_logits, part_logits = logits[:1], logits[1:]
        else:
            masked_logits = self.head(h[keep], self._take(c, keep))["logits"]
            part_logits = (torch.cat([self.head(h[keep[p]], self._take(c, keep[p]))["logits"] for p in parts])
                           if parts else None)
        terms = {"ce": F.cross_entropy(masked_logits, y)}
        if parts:
            terms["pb"] = F.cross_entropy(part_logits, y.expand(part_logits.shape[0]))   # mean over pseudo-bags
        if self.max_instance_weight > 0 and self.backbone.attention_pooling:
            terms["inst_max"] = self.max_instance_loss(h, c, y)   # full bag, as the plain backbone
        if self.beta > 0:
            att = self.head(h, c)["scores"]                    # (T,) full-bag attention
            terms["con"] = consistency_loss(att, self.token_groups(bag, groups), self.con_form, groups.n_groups)
        return TrainOutput.make(masked_logits, terms,
                                {"pb": self.alpha, "inst_max": self.max_instance_weight, "con": self.beta},
                                {"n_kept": int(keep.numel())})
