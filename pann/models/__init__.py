"""Backbones: one builder per model (CIFAR ResNets and VGGs, any torchvision classifier), and named weights that
carry their URL, hash, input normalisation and reported accuracy (torchvision's manner).

Imports no other subpackage.
"""

from pann.models.builders import (Classifier, build_model, load_weights, model_names, resnet20, resnet32, resnet44,
                                  resnet56, resnet110, save_weights)
from pann.models.weights import WEIGHTS, PretrainedWeights, get_weights, resolve

__all__ = ["WEIGHTS", "Classifier", "PretrainedWeights", "build_model", "get_weights", "load_weights", "model_names",
           "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resolve", "save_weights"]
