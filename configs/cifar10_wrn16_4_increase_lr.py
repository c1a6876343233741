r"""CIFAR-10, wide ResNet 16-4, batch mode `increase_lr` (Smith, Kindermans, Ying & Le, ICLR 2018, section 5).

Paper section 5.2 'Increased initial learning rate': ε = 0.5 and B = 640 from the start (5x both, same g), then B x5 at epochs 60 and 120 up to B_max = 5,120 at which ε absorbs the rest (ε = 0.16 then 0.032).

Command:
  lbt train --config configs/cifar10_wrn16_4_increase_lr.py --workdir /tmp/wrn_increase_lr
  lbt plan --config configs/cifar10_wrn16_4_increase_lr.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; larger B is reached by accumulating k = B / M microbatches,
so any device count dividing 128 works (elastic), only the wall-clock changes. On one GPU
(k = 1..125 microbatches of 128) the 200 epochs take roughly 6-10 hours.

Setup (paper 5.1): N = 50,000, 200 epochs, m = 0.9, weight decay 5e-4, ghost batch 128,
B_max = 5,120 where capped.
Expected: test accuracy ~94% (paper: slightly below the original schedule).
Expected updates: 6,407 optimizer steps (4,688 + 938 + 391 + 390), 12.2x fewer than decay_lr.
"""

from lbt.config import sibling_config


def get_config():
    """The cifar10_wrn16_4_decay_lr reference recipe with only the batch schedule changed."""
    config = sibling_config(__file__, "cifar10_wrn16_4_decay_lr")
    config.name = "cifar10_wrn16_4_increase_lr"
    config.schedule.batch.mode = "increase_lr"
    config.schedule.batch.max_global_batch = 5120
    config.schedule.batch.lr_factor = 5.0
    return config
