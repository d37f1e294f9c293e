"""A PANN under real CKKS encryption with Orion as the back end (``pann[fhe]``): the PANN lowered to a plan of
layers, the parameter presets, the patches that fit Orion to it, the plaintext reference it is compared with,
and ``pann fhe-check``. Orion itself is imported lazily, only by :mod:`pann.fhe.backend`.

Imports every other subpackage but none imports it.
"""

from pann.fhe.backend import CheckReport, FheUnavailable, ImageResult, build_network, check, dry_run, orion_modules

__all__ = ["CheckReport", "FheUnavailable", "ImageResult", "build_network", "check", "dry_run", "orion_modules"]
