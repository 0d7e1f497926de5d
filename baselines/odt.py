"""ODT, the Online Decision Transformer (Zheng, Zhang & Grover, ICML 2022): `--method odt`.

Online finetuning of the pretrained stochastic DT with the same supervised objective it was
pretrained with, on a replay buffer that fills with its own exploration:

* each iteration rolls out ``rollouts_per_iteration`` episodes with sampled actions at the task's
  online RTG target (ODT: twice the evaluation target) and adds them to a FIFO buffer of whole
  trajectories seeded with the best offline ones (``baselines.common.TrajectoryReplay``);
* stored RTG tokens are the returns-to-go the episode actually achieved (hindsight relabeling);
* ``updates_per_iteration`` updates of ODT's loss (``dtrl.models.losses.dt_supervised_loss``: masked NLL
  minus temperature x entropy, and the temperature's own loss towards the target entropy -|A|)
  with LAMB + warmup + gradient clipping (``dtrl.harness.pretrain.SupervisedTrainer``, the same update as
  pretraining, continuing its optimizer state as ODT does).

Defaults are ODT's published MuJoCo values: K = 20 (the model's), batch 256, 300 updates and one
rollout per iteration, lr 1e-4, weight decay 5e-4, warmup 10k, buffer of 1000 trajectories,
exploration and evaluation context 5, dropout 0.1, gradient clip 0.25, temperature init 0.1
(the model's). That is 300 gradient updates per exploration episode: 0.3 per env step when
episodes last the full 1000 steps, more when they end early.

An update makes no host sync: the minibatch is drawn on the device (``sampler: device``), the
forward+loss runs under pretraining's bf16 autocast and ``torch.compile`` switch (``amp``,
``compile``; the same ``SupervisedTrainer``), and the loss terms are summed on the device, read and
checked for divergence once per iteration. On CPU the update is pretraining's fast one too: the fused
forward (``fused_forward``, dtrl.models.fused_dt) and LAMB's flat gradient buffer (docs/performance.md).
"""

from __future__ import annotations

from baselines.common import MeanTerms, ODTConfig, ODTFamily
from dtrl.util.guard import SUPERVISED_FAULT_KEYS


class ODT(ODTFamily):
    Config = ODTConfig
    needs_dataset = True

    def _update_many(self, n: int) -> dict[str, float]:
        acc = MeanTerms()
        for _ in range(n):
            acc.add(self.trainer.update(self.buffer.sample(self.cfg.batch_size)))
        self.ctx.counters.policy_updates += n
        acc.check(SUPERVISED_FAULT_KEYS, "ODT's update")
        return acc.means()
