"""Guidance: what to steer toward (settings) and the methods that steer (one interface, method.py).

METHODS is the one table of guidance methods, by name."""
from .classifier_free import ClassifierFreeGuidance
from .method import GuidanceMethod, Move, Prediction
from .noise_aware import ORDERS, GuidedEps, NoiseAwareGuidance
from .settings import SCHEDULE_SHAPES, THRESHOLDS, Guidance, NonFiniteError, Schedule, Threshold
from .training_free import TrainingFree, TrainingFreeGuidance

METHODS = {method.name: method for method in (ClassifierFreeGuidance, NoiseAwareGuidance, TrainingFreeGuidance)}

__all__ = ["ClassifierFreeGuidance", "GuidanceMethod", "Move", "Prediction", "ORDERS", "GuidedEps",
           "NoiseAwareGuidance", "SCHEDULE_SHAPES", "THRESHOLDS", "Guidance", "NonFiniteError", "Schedule",
           "Threshold", "TrainingFree", "TrainingFreeGuidance", "METHODS"]
