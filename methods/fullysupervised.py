"""Fully supervised reference row: the supervised loss on every training label."""

from __future__ import annotations

from bench.registry import register_method
from methods.supervised import Supervised


@register_method("fullysupervised")
class FullySupervised(Supervised):
    labeled_source = "all"
    reference = "CE on 100% of the training labels: the upper reference, reported once per dataset"
