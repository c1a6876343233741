r"""CIFAR-10, wide ResNet 16-4, the paper's "increased initial learning rate" run (Smith,
Kindermans, Ying & Le, ICLR 2018, "Don't Decay the Learning Rate, Increase the Batch Size",
section 5.2): batch mode `increase_lr`, lr_factor 5, B_max = 5,120.

Paper: initial ε = 0.5, initial batch 640 (5x both, so the same g as decay_lr), m = 0.9,
B_max = 5,120 (section 5.2); the batch grows by 5 at the original steps until B_max, then ε
decays: B 640 -> 3,200 at epoch 60 -> 5,120 at epoch 120 (ε = 0.5 * 5,120 / 16,000 = 0.16
absorbs the rest) -> ε = 0.032 at epoch 160. Model, optimizer and ghost batch as
cifar10_wrn16_4_decay_lr (Nesterov, weight decay 5e-4: Holt & Sievert, SciPy 2021).
Paper's figures: fewer than 6,500 parameter updates (section 5.2); lbt's plan: 6,407, which
matches. The accounts cited give no accuracy for it; the abstract notes a slight accuracy loss
only for raising the momentum ("tends to slightly reduce the test accuracy"), not for raising ε.
lbt's assumptions: those of cifar10_wrn16_4_decay_lr; the rule at B_max (B = 5,120, ε absorbs
the rest), which is what the paper's update count needs. B = 5,120 > N/10 from epoch 120:
εN/(B(1-m)) overstates the exact g by 11% there (`lbt plan` warns).

Command:
  lbt train --config configs/cifar10_wrn16_4_increase_lr.py --workdir /tmp/wrn_increase_lr
  lbt plan --config configs/cifar10_wrn16_4_increase_lr.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; larger B is reached by accumulating k = B / M microbatches
(k = 5 to 40), so any device count dividing 128 works (elastic), only the wall-clock changes.

Expected: ~94% test accuracy (not run here).
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
