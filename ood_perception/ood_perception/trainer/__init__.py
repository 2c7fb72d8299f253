"""Trainer room: training loops, evaluation, checkpoints (atomic, resumable), DDP via torchrun.

Task modules (``segmentation``, ``recognition``) expose ``add_arguments(parser)`` and
``run(args) -> int`` for ``ood-perception train <task>``; heavy imports happen inside them.
"""
