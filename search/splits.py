"""The images a search uses, sized in its config: training images for calibration and corrections, and three
disjoint sets for validation, confirmation and test.

* calibration: training images that set each layer's interval ``B``;
* batchnorm: training images (the first ``batchnorm_size`` of those calibration starts from) on which the
  corrections ``batchnorm`` and ``batchnorm-in-range`` re-estimate the norms' statistics, augmented as in training;
* validation: what trials are scored on (what Optuna sees);
* confirmation: what picks the answer among the front's candidates (never seen by a trial);
* test: what the answer's accuracy is reported on (chose nothing).

With ``validation_from='train'`` validation is held out of the training set (the same hold-out training
uses, :func:`pann.data.split_train` with the training config's seed), and confirmation and test split the
test set. With ``'test'`` (for backbones pretrained on the whole training set) validation, confirmation and
test are consecutive slices of the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

from pann.conversion.corrections import CORRECTIONS
from pann.data import ImageSet, load_dataset, split_train
from pann.training.trainer import TrainConfig


@dataclass(frozen=True)
class Splits:
    calibration: ImageSet
    validation: ImageSet
    confirmation: ImageSet | None
    test: ImageSet
    batchnorm: ImageSet

    @classmethod
    def for_search(cls, search) -> Splits:
        """The splits of ``search`` (a :class:`search.config.SearchConfig`); ``ValueError`` naming the config
        field when the sizes do not fit the data."""
        seed = TrainConfig(**{**search.training, "model": search.model, "dataset": search.dataset}).seed
        train = load_dataset(search.dataset, "train", search.data_dir)
        test = load_dataset(search.dataset, "test", search.data_dir)
        v, c = search.validation_size, search.confirmation_size
        problems = []
        pool = test if search.validation_from == "test" else train
        if v >= len(pool):
            problems.append(f"backbone.validation_size: {v} leaves no image of the {len(pool)} "
                            f"{'test' if pool is test else 'training'} images")
        held_from_test = (v if search.validation_from == "test" else 0) + c
        if held_from_test >= len(test):
            problems.append(f"backbone.confirmation_size: {c} (with validation_size {v}) leaves no test image "
                            f"of {len(test)}")
        if problems:
            raise ValueError("; ".join(problems))
        if search.validation_from == "test":
            train_part, validation = train, test.subset(slice(0, v))
        else:
            train_part, validation = split_train(train, v, seed)
        corrects_norms = any("batchnorm" in CORRECTIONS[c].needs for c in search.corrections)
        sized = ("calibration_size",) + (("batchnorm_size",) if corrects_norms else ())
        problems = [f"backbone.{key}: {getattr(search, key)} is more than the {len(train_part)} training images"
                    for key in sized if getattr(search, key) > len(train_part)]
        if problems:
            raise ValueError("; ".join(problems))
        start = v if search.validation_from == "test" else 0
        confirmation = test.subset(slice(start, start + c)) if c else None
        return cls(train_part.subset(slice(0, search.calibration_size)), validation, confirmation,
                   test.subset(slice(start + c, None)), train_part.subset(slice(0, search.batchnorm_size)))
