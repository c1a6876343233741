r"""CIFAR-10, wide ResNet 16-4, batch mode `increase_batch` (Smith, Kindermans, Ying & Le, ICLR
2018, "Don't Decay the Learning Rate, Increase the Batch Size", section 5.1).

Paper: "Increasing batch size" (section 5.1): ε = 0.1 throughout, B multiplied by 5 at every
step of the original schedule, epochs 60, 120 and 160 (128 -> 640 -> 3,200 -> 16,000); the same
noise scale g = εN/(B(1-m)) as decay_lr at every epoch. Model, optimizer and ghost batch as
cifar10_wrn16_4_decay_lr (Nesterov, weight decay 5e-4: Holt & Sievert, SciPy 2021).
Paper's figures: test accuracy equivalent to the decaying schedule after the same epochs (the
paper's abstract: "equivalent test accuracies after the same number of training epochs, but with
fewer parameter updates"). The accounts cited give no update count for this run; lbt's plan:
28,876.
lbt's assumptions: those of cifar10_wrn16_4_decay_lr. Note B = 16,000 > N/10 in the last phase:
there εN/(B(1-m)) overstates the exact ε(N/B - 1)/(1-m) by 47% (`lbt plan` warns).

Command:
  lbt train --config configs/cifar10_wrn16_4_increase_batch.py --workdir /tmp/wrn_increase_batch
  lbt plan --config configs/cifar10_wrn16_4_increase_batch.py    # phases, steps, plan.png

Hardware: designed for one host with 8 accelerators (e.g. a TPU v3-8/v4-8 or 8 GPUs): the global
microbatch M = 128 is 16 per device; larger B is reached by accumulating k = B / M microbatches
(k up to 125), so any device count dividing 128 works (elastic), only the wall-clock changes.

Expected: ~94% test accuracy, the decay_lr curve versus epochs (not run here).
Expected updates: 28,876 optimizer steps (23,438 + 4,688 + 625 + 125), 2.71x fewer than decay_lr.
"""

from lbt.config import sibling_config


def get_config():
    """The cifar10_wrn16_4_decay_lr reference recipe with only the batch schedule changed."""
    config = sibling_config(__file__, "cifar10_wrn16_4_decay_lr")
    config.name = "cifar10_wrn16_4_increase_batch"
    config.schedule.batch.mode = "increase_batch"
    return config
