"""Accumulating pixel, point, frame, object, component and alert metrics over frames; used by trainer, replay and evaluate alike."""
