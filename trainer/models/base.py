"""The interface every MIL model shares.

A model sees one :class:`~trainer.data.Bag` at a time. Its tokens are the patch features, followed by
the segment group features when ``group_features`` is on::

    x = tokens(bag)                  (T, D), T = N (+ S)
    h = embed(x)                     (T, E)   per-instance network (dropout inside)
    c = instance_cache(h)            (T, ...) optional per-instance precompute (e.g. attention logits),
                                              indexable like h; None when the model has none
    out = head(h[idx], c[idx])       dict: logits (1, C), scores (len(idx),), embedding (1, E)

``forward(bag)`` runs that on all tokens (evaluation). ``train_forward(bag)`` is the training step's
forward: a :class:`TrainOutput` holding the bag's logits and a dict of named, unweighted loss terms with
the weight of each (plain models: ``ce`` on the full bag, plus ``inst_max`` for attention models; SAM-MIL
adds ``pb`` and ``con``). The loop back-propagates ``loss`` (the weighted sum) and logs every term that
comes back; it knows no term by name. ``scores`` are attention weights (or instance scores); the first
``N`` entries align with the store's ``coords``. Splitting embed / head lets SAM-MIL embed a bag once and
reuse it for the masked bag, the pseudo-bags and the consistency term.

A model's constructor takes ``in_dim``, ``n_classes`` and keyword parameters only (its own config, with
defaults); ``trainer.models.registry.build_model`` fills them from a run's TrainConfig by name. Class
attributes tell the rest of the trainer what a model needs, so that no code outside the models names one:
``attention_pooling``, ``score_kind``, ``uses_group_features_by_default``, ``uses_sg2m``, ``loss_terms``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Loss terms written to metrics.csv as ``train_<term>`` columns, in this order, whatever the model: one
# header for every run, so that runs of different models compare column by column. A term a model
# returns outside this list (DSMIL's ``max_ce``) is averaged by the loop but not written.
METRIC_TERMS = ("ce", "pb", "con", "inst_max", "inst")


class TrainOutput(NamedTuple):
    """What :meth:`MILModel.train_forward` returns (a tuple, so that DDP finds the tensors in it)."""

    loss: torch.Tensor                  # () the weighted sum of ``terms``, attached to the graph
    logits: torch.Tensor                # (1, C) the bag's training prediction, detached
    terms: dict                         # name -> () unweighted loss term, attached to the graph
    weights: dict                       # name -> weight of the term in ``loss``
    info: dict                          # non-loss numbers (SAM-MIL: ``n_kept``)

    @classmethod
    def make(cls, logits: torch.Tensor, terms: dict, weights: dict | None = None,
             info: dict | None = None) -> "TrainOutput":
        """Sum ``weights[name] * terms[name]`` in the order of ``terms`` (a missing weight is 1)."""
        weights = {k: float((weights or {}).get(k, 1.0)) for k in terms}
        total = None
        for k, t in terms.items():
            x = t if weights[k] == 1.0 else weights[k] * t
            total = x if total is None else total + x
        return cls(total, logits.detach(), dict(terms), weights, dict(info or {}))


class MILModel(nn.Module):
    """Base class. Subclasses implement ``embed`` and ``head`` (and optionally ``instance_cache``)."""

    model_name = "base"
    attention_pooling = False      # True: attention-weighted pooling that the max-instance term helps
    score_kind = "attention"       # what ``scores`` hold: "attention" weights or "instance" scores
    uses_group_features_by_default = False   # TrainConfig.group_features=None resolves to this
    uses_sg2m = False              # masks instances with SG2M (the store's SAM segments) while training
    loss_terms: tuple = ("ce", "inst_max")   # every term train_forward may return

    def __init__(self, in_dim: int, n_classes: int, *, group_features: bool = False,
                 max_instance_weight: float = 0.0):
        """The settings every model shares.

        Args:
            group_features: append the segment group-feature tokens to the patches.
            max_instance_weight: weight of the auxiliary max-instance CE (attention-pooling models).
        """
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.use_group_features = bool(group_features)
        self.max_instance_weight = float(max_instance_weight or 0.0)
        # feature standardisation (x - mean) / sd, fitted on the training part of each fold
        # (:meth:`set_feature_stats`); identity until then. Saved in checkpoints, so predict and heatmap
        # apply the same transform.
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_inv_sd", torch.ones(in_dim))
        self.epoch = 0                 # the training epoch under way (:meth:`set_epoch`)

    def set_epoch(self, epoch: int) -> None:
        """Told by the training loop which epoch starts (0-based); for schedules inside a model."""
        self.epoch = int(epoch)

    # -- token layout
    def tokens(self, bag) -> torch.Tensor:
        """``(T, D)``: patches, then group features when enabled, standardised."""
        x = bag.features
        if self.use_group_features and bag.n_segments:
            x = torch.cat([x, bag.group_features], dim=0)
        return (x - self.feat_mean) * self.feat_inv_sd

    def set_feature_stats(self, mean, sd) -> None:
        """Standardise inputs with per-dimension ``mean`` and ``sd`` ``(D,)`` (sd floored at 1e-6)."""
        mean = torch.as_tensor(mean, dtype=self.feat_mean.dtype, device=self.feat_mean.device)
        sd = torch.as_tensor(sd, dtype=self.feat_mean.dtype, device=self.feat_mean.device)
        self.feat_mean.copy_(mean)
        self.feat_inv_sd.copy_(1.0 / sd.clamp_min(1e-6))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before standardisation existed: identity transform
        for name, fill in (("feat_mean", 0.0), ("feat_inv_sd", 1.0)):
            state_dict.setdefault(prefix + name, torch.full((self.in_dim,), fill))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- attention initialisation
    def attention_output_layers(self) -> list[nn.Linear]:
        """The layers whose zeroing makes attention uniform over the bag (none for non-attention models)."""
        return []

    def init_uniform_attention(self) -> None:
        """Start with uniform attention (mean pooling): zero :meth:`attention_output_layers`.

        Optional (``--attn-init uniform``). At uniform attention the bag embedding is the mean, in which a
        rare lesion is invisible; in our measurements this start found rare lesions less often than the
        random (xavier) start, which gives outlying patches extreme attention, one way or the other.
        """
        for layer in self.attention_output_layers():
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def n_group_tokens(self, bag) -> int:
        return bag.n_segments if self.use_group_features else 0

    # -- the three stages
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def instance_cache(self, h: torch.Tensor) -> torch.Tensor | None:
        return None

    def head(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> dict:
        raise NotImplementedError

    # -- public API
    def forward(self, bag) -> dict:
        h = self.embed(self.tokens(bag))
        out = self.head(h, self.instance_cache(h))
        out["n_patches"] = bag.n_patches
        return out

    def pool_subsets(self, h: torch.Tensor, cache: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        """Logits ``(P, C)`` of P sub-bags given as boolean rows ``subsets`` ``(P, T)`` (attention pooling).

        Equal to ``head(h[idx], cache[idx])["logits"]`` for each row's indices: softmax of the attention
        logits over the row's tokens, one ``(P, T) x (T, E)`` product for all rows. For models with
        ``attention_pooling`` (attention logits in ``cache``, a ``classifier`` on the pooled embedding).
        """
        s = cache.unsqueeze(0).masked_fill(~subsets, float("-inf"))   # (P, T)
        a = torch.softmax(s, dim=1)                                    # (P, T), 0 outside each row
        return self.classifier(a @ h)                                  # (P, C)

    def instance_logits(self, h: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        """``(T, C)``: row i = the logits of a bag holding only instance i.

        Default: the head on every single token (exact, one head call per token); models override it with
        a vectorised equivalent where one exists (AB-MIL: ``classifier(h)``, a bag of one has attention 1).
        """
        return torch.cat([self.head(h[i:i + 1], None if cache is None else cache[i:i + 1])["logits"]
                          for i in range(h.shape[0])])

    def max_instance_loss(self, h: torch.Tensor, cache, y: torch.Tensor) -> torch.Tensor:
        """Auxiliary max-instance term: CE of the per-class maximum of :meth:`instance_logits` ``(1, C)``.

        The bag classifier, applied to each instance, must find the bag's class in its most convincing
        instance (max pooling). This aligns the classifier with the direction that separates a rare lesion
        from the rest early in training; attention then has a gradient towards the lesion patches instead
        of towards whatever separates the training slides.
        """
        il = self.instance_logits(h, cache)
        return F.cross_entropy(il.max(0).values.unsqueeze(0), y.view(1))

    def train_forward(self, bag) -> TrainOutput:
        """``ce`` on the full bag, plus ``inst_max`` (weight ``max_instance_weight``) for attention pooling."""
        h = self.embed(self.tokens(bag))
        c = self.instance_cache(h)
        out = self.head(h, c)
        terms = {"ce": F.cross_entropy(out["logits"], bag.label.view(1))}
        if self.max_instance_weight > 0 and self.attention_pooling:
            terms["inst_max"] = self.max_instance_loss(h, c, bag.label)
        return TrainOutput.make(out["logits"], terms, {"inst_max": self.max_instance_weight})

    def loss_dict(self, bag) -> dict:
        """:meth:`train_forward` as one flat dict: ``{"loss", <term>..., "logits", <info>...}``."""
        o = self.train_forward(bag)
        return {"loss": o.loss, **o.terms, "logits": o.logits, **o.info}


def init_linear_xavier(module: nn.Module) -> None:
    """xavier_normal_ on every Linear weight, zero biases (as the reference code)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
