r"""ImageNet, Inception-ResNet-V2, the paper's run (b): ghost batch 64, m = 0.9, initial batch
8,192, B_max = 65,536 (Smith, Kindermans, Ying & Le, ICLR 2018, "Don't Decay the Learning Rate,
Increase the Batch Size", section "Training ImageNet in 2500 parameter updates").

Paper: initial ε = 3.0, momentum 0.9, ghost batch 64, initial batch 8,192, B_max = 65,536: run (a)
(imagenet_inception_resnet_v2_ghost32_increase_batch) with ghost batch 64. In lbt: `hybrid` with
B_max = 65,536: B = 65,536 from the first decay step (ε = 2.4 absorbs the rest of the factor),
then ε ÷ 10 at the later steps.
Paper's figures: the accounts cited give no accuracy or update count for this run; lbt's plan:
5,865 updates, the same as run (a) (only BN's ghost batch differs).
lbt's assumptions: those of imagenet_inception_resnet_v2_decay_lr (its base): 90 epochs, decay
steps at 30, 60 and 80 (not given by the accounts), warmup, weight decay, label smoothing.

Command:
  lbt train --config configs/imagenet_inception_resnet_v2_ghost64_increase_batch.py --workdir /gcs/bucket/irv2_b
  lbt plan --config configs/imagenet_inception_resnet_v2_ghost64_increase_batch.py    # phases, steps, plan.png

Hardware: designed for 256 accelerators (TPU v3-256 cores / v4-256): M = 8,192 is b = 32 images
per device, so each ghost group of 64 spans two devices (cross-replica ghost BN, a small
per-channel psum over each pair); 128 devices: b = 64, one ghost group per device, no BN
communication; 64x A100 80 GB: b = 128 (two groups), bfloat16. B = 65,536 is k = 8.

Expected: not run here (no ImageNet on this machine); the accounts cited give no accuracy.
Expected updates: `lbt plan`: 5,865 optimizer steps (4,692 at B = 8,192 + 1,173 at B = 65,536),
2.40x fewer than decay_lr's 14,076.
"""

from lbt.config import sibling_config


def get_config():
    """The imagenet_inception_resnet_v2_decay_lr base with the ghost batch and schedule of run (b)."""
    config = sibling_config(__file__, "imagenet_inception_resnet_v2_decay_lr")
    config.name = "imagenet_inception_resnet_v2_ghost64_increase_batch"
    config.model.ghost_batch_size = 64
    config.schedule.batch.mode = "hybrid"
    config.schedule.batch.max_global_batch = 65536
    return config
