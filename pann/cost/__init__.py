"""What a PANN costs under CKKS: the level graph of the network, exact bootstrap placement on it, and the
preset (level costs, operation times) that turns the placement into levels, bootstraps and latency.

Imports :mod:`pann.approximation` and :mod:`pann.conversion`.
"""

from pann.cost.network import NetworkCost, network_cost
from pann.cost.objectives import COST_METRICS, OBJECTIVES, Objective, cost_metrics, objective
from pann.cost.preset import CostPreset, PresetError, load_preset, preset_names

__all__ = ["COST_METRICS", "OBJECTIVES", "CostPreset", "NetworkCost", "Objective", "PresetError", "cost_metrics",
           "load_preset", "network_cost", "objective", "preset_names"]
