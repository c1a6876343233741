r"""ImageNet, ResNet-50 v1.5: lbt's variant applying Smith et al.'s rule to Goyal et al.'s 8k recipe
(the LR decays replaced by batch growth, B_max = 65,536, hybrid after it). NOT a run described in
Smith, Kindermans, Ying & Le, ICLR 2018, "Don't Decay the Learning Rate, Increase the Batch Size".

Schedule (batch.mode = hybrid, same noise scale g = εN/(B(1-m)) as the goyal8k reference at
every examples_seen): 5-epoch warmup 0.1 -> 3.2 at B = 8,192; at epoch 30 the reference divides
ε by 10, here B should become 81,920 but is capped at B_max = 65,536 so ε = 3.2 · 0.8 = 2.56
absorbs the remainder; at epochs 60 and 80 B is already at B_max, so ε ÷ 10 (0.256, 0.0256).
This is the schedule shape of Smith et al.'s Inception-ResNet-V2 run (a) (batch increased at
the first decay step only, B_max = 65,536; imagenet_inception_resnet_v2_ghost32_increase_batch).
Paper's figures: none for this recipe. Smith et al.'s ResNet-50 result is "76.1% validation
accuracy in under 30 minutes" (the arXiv:1711.00489v2 abstract), with a schedule lbt does not
reproduce here; Goyal et al. 2017 report 76.26% for the reference (table 1).
lbt's assumptions: the whole recipe (Goyal et al.'s settings, see imagenet_resnet50_goyal8k, plus
hybrid growth to B_max = 65,536).

Command:
  lbt train --config configs/imagenet_resnet50_increase_batch.py --workdir /gcs/bucket/resnet50_increase_batch
  lbt plan --config configs/imagenet_resnet50_increase_batch.py    # phases, steps, plan.png

Hardware: designed for 256 accelerators (TPU v3-256 cores, v4-256, or 256 GPUs). M = 8,192 is
b = 32 per device; B = 8,192 is k = 1 microbatch per step, B = 65,536 is k = 8 microbatches
accumulated locally before the single all-reduce (no recompilation, no extra memory). Ghost
batch G = 32 keeps the BN noise of the 8k run whatever k is. On 128 devices b = 64 (2 ghost
groups per device); on 64x A100, b = 128.

Expected: ~76% top-1 if the equivalence the paper's abstract claims ("equivalent test accuracies
after the same number of training epochs") holds for this recipe (not run here).
Expected updates: 30 · N / 8,192 + 60 · N / 65,536 = 4,691.7 + 1,172.9 ≈ 5,865.
`lbt plan`: 5,865 optimizer steps (4,692 at B = 8,192 + 1,173 at B = 65,536), 2.40x fewer than
goyal8k's 14,076.
"""

from lbt.config import sibling_config


def get_config():
    """The goyal8k reference recipe with only the batch schedule changed."""
    config = sibling_config(__file__, "imagenet_resnet50_goyal8k")
    config.name = "imagenet_resnet50_increase_batch"
    config.schedule.batch.mode = "hybrid"
    config.schedule.batch.max_global_batch = 65536
    return config
