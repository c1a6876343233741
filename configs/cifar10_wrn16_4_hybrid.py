r"""CIFAR-10, wide ResNet 16-4, batch mode `hybrid` (Smith, Kindermans, Ying & Le, ICLR 2018, section 5).

Paper fig. 2 'Hybrid': grow B by 5 at epochs 60 and 120 (128 -> 640 -> 3,200), then B_max = 5,120 at epoch 160 with ε = 0.1 * 5,120 / 16,000 = 0.032 so g equals decay_lr's (the paper keeps B = 3,200 and decays ε to 0.02; same g, see docs/schedules.md).

Command:
  lbt train --config configs/cifar10_wrn16_4_hybrid.py --workdir /tmp/wrn_hybrid
  lbt plan --config configs/cifar10_wrn16_4_hybrid.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; larger B is reached by accumulating k = B / M microbatches,
so any device count dividing 128 works (elastic), only the wall-clock changes. On one GPU
(k = 1..125 microbatches of 128) the 200 epochs take roughly 6-10 hours.

Setup (paper 5.1): N = 50,000, 200 epochs, m = 0.9, weight decay 5e-4, ghost batch 128,
B_max = 5,120 where capped.
Expected: test accuracy ~94-95%.
Expected updates: 29,142 optimizer steps (23,438 + 4,688 + 625 + 391), 2.68x fewer than decay_lr.
"""

from lbt.config import sibling_config


def get_config():
    """The cifar10_wrn16_4_decay_lr reference recipe with only the batch schedule changed."""
    config = sibling_config(__file__, "cifar10_wrn16_4_decay_lr")
    config.name = "cifar10_wrn16_4_hybrid"
    config.schedule.batch.mode = "hybrid"
    config.schedule.batch.max_global_batch = 5120
    return config
