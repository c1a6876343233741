r"""ImageNet, Inception-ResNet-V2, the paper's run (c): ghost batch 64, m = 0.95, initial batch
16,384, B_max = 65,536 (Smith, Kindermans, Ying & Le, ICLR 2018, "Don't Decay the Learning Rate,
Increase the Batch Size", section "Training ImageNet in 2500 parameter updates").

Paper: initial ε = 3.0, momentum 0.95, ghost batch 64, initial batch 16,384, B_max = 65,536.
Against the reference's m = 0.9 and B = 8,192 that is B x (1 - 0.9) / (1 - 0.95) = 2 at the same
ε, the same g = εN/(B(1-m)). In lbt: `increase_momentum` with final_momentum 0.95 and
B_max = 65,536: m = 0.95 for the whole run, B = 16,384 until the first decay step, then 65,536
(the ideal 163,840 is capped; ε = 3.0 * 0.4 = 1.2 absorbs the rest), then ε ÷ 10.
Paper's figures: the accounts cited give no accuracy or update count for this run; lbt's plan:
3,519 updates.
lbt's assumptions: those of imagenet_inception_resnet_v2_decay_lr (its base): 90 epochs, decay
steps at 30, 60 and 80 (not given by the accounts), warmup, weight decay, label smoothing. The
momentum buffer starts at zero and needs about 1/(1-m) = 20 updates to fill.

Command:
  lbt train --config configs/imagenet_inception_resnet_v2_ghost64_momentum095.py --workdir /gcs/bucket/irv2_c
  lbt plan --config configs/imagenet_inception_resnet_v2_ghost64_momentum095.py    # phases, steps, plan.png

Hardware: designed for 256 accelerators (TPU v3-256 cores / v4-256): M = 8,192 is b = 32 images
per device, so each ghost group of 64 spans two devices (cross-replica ghost BN); 128 devices:
b = 64, no BN communication; 64x A100 80 GB: b = 128, bfloat16. B = 16,384 is k = 2 and 65,536
is k = 8 microbatches accumulated before the single all-reduce.

Expected: not run here (no ImageNet on this machine); the accounts cited give no accuracy.
Expected updates: `lbt plan`: 3,519 optimizer steps (2,346 at B = 16,384 + 1,173 at
B = 65,536), 4.00x fewer than decay_lr's 14,076.
"""

from lbt.config import sibling_config


def get_config():
    """The imagenet_inception_resnet_v2_decay_lr base with the ghost batch and schedule of run (c)."""
    config = sibling_config(__file__, "imagenet_inception_resnet_v2_decay_lr")
    config.name = "imagenet_inception_resnet_v2_ghost64_momentum095"
    config.model.ghost_batch_size = 64
    config.schedule.batch.mode = "increase_momentum"
    config.schedule.batch.final_momentum = 0.95
    config.schedule.batch.max_global_batch = 65536
    return config
