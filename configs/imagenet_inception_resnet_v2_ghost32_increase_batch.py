r"""ImageNet, Inception-ResNet-V2, the paper's run (a): ghost batch 32, m = 0.9, initial batch
8,192, the batch increased only at the first decay step, B_max = 65,536 (Smith, Kindermans, Ying
& Le, ICLR 2018, "Don't Decay the Learning Rate, Increase the Batch Size", section "Training
ImageNet in 2500 parameter updates").

Paper: initial ε = 3.0, momentum 0.9, ghost batch 32, initial batch 8,192, B_max = 65,536; the
batch is increased at the first decay step only, and ε decays at the later ones. In lbt:
`hybrid` with B_max = 65,536 on the decay_lr reference: at the first step the ideal B is 81,920,
capped at 65,536, and ε = 3.0 * 0.8 = 2.4 absorbs the rest (same g = εN/(B(1-m))); then
ε ÷ 10 at the later steps (0.24, 0.024).
Paper's figures: the updates fall "from 14,000 to below 6,000"; lbt's plan: 5,865 (against
14,076 for decay_lr), which matches. The accounts cited give no accuracy for this run.
lbt's assumptions: those of imagenet_inception_resnet_v2_decay_lr (its base), in particular 90
epochs with decay steps at 30, 60 and 80 (the accounts give neither); under them the first
decay step is epoch 30: 30 N / 8,192 + 60 N / 65,536 = 4,691.7 + 1,172.9 ≈ 5,865 updates.

Command:
  lbt train --config configs/imagenet_inception_resnet_v2_ghost32_increase_batch.py --workdir /gcs/bucket/irv2_a
  lbt plan --config configs/imagenet_inception_resnet_v2_ghost32_increase_batch.py    # phases, steps, plan.png

Hardware: designed for 256 accelerators (TPU v3-256 cores / v4-256): M = 8,192 is b = 32 images
per device (= the ghost batch, BN needs no communication); B = 65,536 is k = 8 microbatches
accumulated before the single all-reduce. 128 devices: b = 64; 64x A100 80 GB: b = 128, bfloat16.

Expected: not run here (no ImageNet on this machine); the accounts cited give no accuracy.
Expected updates: the paper's "below 6,000"; `lbt plan`: 5,865 optimizer steps (4,692 at
B = 8,192 + 1,173 at B = 65,536), 2.40x fewer than decay_lr's 14,076.
"""

from lbt.config import sibling_config


def get_config():
    """The imagenet_inception_resnet_v2_decay_lr base with the batch schedule of run (a)."""
    config = sibling_config(__file__, "imagenet_inception_resnet_v2_decay_lr")
    config.name = "imagenet_inception_resnet_v2_ghost32_increase_batch"
    config.model.ghost_batch_size = 32
    config.schedule.batch.mode = "hybrid"
    config.schedule.batch.max_global_batch = 65536
    return config
