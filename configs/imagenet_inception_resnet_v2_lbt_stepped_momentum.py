r"""ImageNet, Inception-ResNet-V2, lbt's stepped-momentum variant: NOT a run of the paper.

Smith, Kindermans, Ying & Le (ICLR 2018, section "Training ImageNet in 2500 parameter updates")
hold m fixed within each run (0.9, 0.95 or 0.975: imagenet_inception_resnet_v2_ghost32_
increase_batch, ..._ghost64_increase_batch, ..._ghost64_momentum095, ..._ghost64_momentum0975).
This variant is lbt's: it steps m within one run, 0.9 -> 0.95 at epoch 0.5 -> 0.975 at epoch 1.5
(schedule.momentum_schedule), multiplying B by (1 - m_prev) / (1 - m_new) = 2 at each step (8,192
-> 16,384 -> 32,768) so that g = εN/(B(1-m)) is kept, with ghost batch 32; then hybrid growth to
B_max = 65,536 at epoch 30 (ε = 3.0 * 0.2 = 0.6 absorbs the rest) and ε ÷ 10 at 60 and 80. The
idea is that the low-momentum start (about 80 updates per phase) lets the momentum buffer fill
before m is high.
Paper's figures: none; no run of the paper has this schedule. lbt's plan: 2,445 updates, slightly
more than run (d)'s 2,346.
lbt's assumptions: the momentum milestones (epochs 0.5 and 1.5, chosen to stay near 2,500
updates; milestones at 1 and 2 give 2,503), and those of imagenet_inception_resnet_v2_decay_lr
(its base): 90 epochs, decay steps at 30, 60 and 80, warmup, weight decay, label smoothing.

Command:
  lbt train --config configs/imagenet_inception_resnet_v2_lbt_stepped_momentum.py --workdir /gcs/bucket/irv2_stepped
  lbt plan --config configs/imagenet_inception_resnet_v2_lbt_stepped_momentum.py    # phases, steps, plan.png

Hardware: designed for 256 accelerators (TPU v3-256 cores / v4-256): M = 8,192 is b = 32 images
of 299x299 per device (= the ghost batch, so BN needs no communication); B = 16,384, 32,768 and
65,536 are k = 2, 4 and 8 microbatches accumulated before the single all-reduce. 128 devices:
b = 64 (two ghost groups); 64x A100 80 GB: b = 128 in bfloat16.

Expected: not run here (no ImageNet on this machine) and no published figure; at best about run
(d)'s 77%.
Expected updates: by hand 0.5 N / 8,192 + N / 16,384 + 28.5 N / 32,768 + 60 N / 65,536 = 78.2 +
78.2 + 1,114.3 + 1,172.9 ≈ 2,443.6; `lbt plan`: 2,445 optimizer steps (79 + 78 + 1,115 + 1,173,
each phase's last step overshooting into the next), 5.76x fewer than decay_lr's 14,076.
"""

from lbt.config import sibling_config


def get_config():
    """The imagenet_inception_resnet_v2_decay_lr base with lbt's stepped momentum."""
    config = sibling_config(__file__, "imagenet_inception_resnet_v2_decay_lr")
    config.name = "imagenet_inception_resnet_v2_lbt_stepped_momentum"
    config.model.ghost_batch_size = 32
    s = config.schedule
    s.batch.mode = "hybrid"
    s.batch.max_global_batch = 65536
    # m 0.9 -> 0.95 -> 0.975 with B 8192 -> 16384 -> 32768 (B x (1 - m_prev) / (1 - m_new)).
    s.momentum_schedule.milestones = (0.5, 1.5)
    s.momentum_schedule.values = (0.95, 0.975)
    return config
