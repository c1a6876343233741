r"""ImageNet, Inception-ResNet-V2, the paper's run (d): 77% in under 2,500 updates. Ghost batch 64,
m = 0.975, initial batch 32,768, B_max = 65,536 (Smith, Kindermans, Ying & Le, ICLR 2018, "Don't
Decay the Learning Rate, Increase the Batch Size", section "Training ImageNet in 2500 parameter
updates", and the abstract).

Paper: initial ε = 3.0, momentum 0.975, ghost batch 64, initial batch 32,768, B_max = 65,536.
Against the reference's m = 0.9 and B = 8,192 that is B x (1 - 0.9) / (1 - 0.975) = 4 at the same
ε, the same g = εN/(B(1-m)). In lbt: `increase_momentum` with final_momentum 0.975 and
B_max = 65,536: m = 0.975 for the whole run, B = 32,768 until the first decay step, then 65,536
(the ideal 327,680 is capped; ε = 3.0 * 0.2 = 0.6 absorbs the rest), then ε ÷ 10.
Paper's figures: 77% validation accuracy in under 2,500 parameter updates with batches of 65,536
(the paper's abstract, ICLR 2018 version); lbt's plan: 2,346 updates, which matches.
lbt's assumptions: those of imagenet_inception_resnet_v2_decay_lr (its base): 90 epochs, decay
steps at 30, 60 and 80 (not given by the accounts), warmup, weight decay, label smoothing. Under
them 30 N / 32,768 + 60 N / 65,536 = 1,172.9 + 1,172.9 ≈ 2,346. The momentum buffer starts at
zero and needs about 1/(1-m) = 40 updates to fill; the paper's accounts note that the highest-
momentum runs need extra epochs (docs/schedules.md).

Command:
  lbt train --config configs/imagenet_inception_resnet_v2_ghost64_momentum0975.py --workdir /gcs/bucket/irv2_d
  lbt plan --config configs/imagenet_inception_resnet_v2_ghost64_momentum0975.py    # phases, steps, plan.png

Hardware: designed for 256 accelerators (TPU v3-256 cores / v4-256):
M = 8,192 is b = 32 images per device, so each ghost group of 64 spans two devices
(cross-replica ghost BN); 128 devices: b = 64, no BN communication; 64x A100 80 GB: b = 128,
bfloat16. B = 32,768 is k = 4 and 65,536 is k = 8 microbatches before the single all-reduce.

Expected: ~77% top-1 (the paper's figure; not run here, no ImageNet on this machine).
Expected updates: the paper's "under 2,500"; `lbt plan`: 2,346 optimizer steps (1,173 at
B = 32,768 + 1,173 at B = 65,536), 6.00x fewer than decay_lr's 14,076.
"""

from lbt.config import sibling_config


def get_config():
    """The imagenet_inception_resnet_v2_decay_lr base with the ghost batch and schedule of run (d)."""
    config = sibling_config(__file__, "imagenet_inception_resnet_v2_decay_lr")
    config.name = "imagenet_inception_resnet_v2_ghost64_momentum0975"
    config.model.ghost_batch_size = 64
    config.schedule.batch.mode = "increase_momentum"
    config.schedule.batch.final_momentum = 0.975
    config.schedule.batch.max_global_batch = 65536
    return config
