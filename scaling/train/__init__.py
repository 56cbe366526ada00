"""The train stage: one run trained and evaluated, faithful to the paper.

Holds the data sets and their readers (`data`, `readers`, image folders in `imagefolder`),
each step's views (`views`), the batched augmentation (`augment`, colour ops in
`photometric`, the official code's TensorFlow crop and colour ops in `official`), NT-Xent (`losses`), LARS and parameter groups (`optim`), gradient
caching (`accumulate`), distributed helpers (`distributed`), one optimizer step per
objective (`steps`), epoch metrics (`metrics`), stop signals agreed across ranks
(`signals`), checkpoints (`checkpoint`), evaluation (`evaluate`), what a finished run
reports of its own cost (`run_cost`) and the trainer (`trainer`), which reads top to
bottom. Imports `scaling.errors`, `scaling.rundir`, `scaling.sweep`, `scaling.models`
and `scaling.plan`; never the run stage (locks, tracking, backends).
"""

from __future__ import annotations

from scaling._exports import lazy

_EXPORTS = {
    "run": "scaling.train.trainer",
    "Preempted": "scaling.train.trainer",
    "nt_xent": "scaling.train.losses",
    "LARS": "scaling.train.optim",
    "param_groups": "scaling.train.optim",
    "cached_backward": "scaling.train.accumulate",
    "SimCLRAugment": "scaling.train.augment",
    "load_dataset": "scaling.train.readers",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy(__name__, _EXPORTS)
