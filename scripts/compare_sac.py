#!/usr/bin/env python
"""dtrl's SAC beside Stable-Baselines3's: env steps, wall and CPU time to D4RL's 'medium'.

    python scripts/compare_sac.py --library dtrl --family hopper -c config/config.yaml -c config/evidence_cpu.yaml
    python scripts/compare_sac.py --library sb3  --family hopper -c config/config.yaml -c config/evidence_cpu.yaml

Both libraries get the same run (issue 19, item 1), read from the experiment's `data.generator`: the
network size (sac_hidden x 2), batch, learning rate, discount, Polyak rate, initial temperature
(auto-tuned towards -act_dim), sac_envs vectorised envs with sac_utd gradient updates per env step,
sac_start_steps uniform-random steps, and one torch thread. Both are judged by the same evaluation,
dtrl's own (`dtrl.data.generate.evaluate_actor`: eval_episodes episodes from the same reset seeds,
sampled actions when eval_stochastic, every eval_every env steps, 'medium' = the first evaluation at
medium_fraction x the family's reference max), and both stop there or at --max-steps. The dtrl run is
`dtrl data`'s behaviour run itself (`train_behaviour(..., until="medium")`, in a fresh folder).

Stable-Baselines3 is not a dependency of dtrl: `pip install -e ".[compare-sac]"` to run the sb3 side.
Run the two sides at the same time, one per core, to share the machine's load. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _sb3_run(exp, family: str, max_steps: int) -> dict:
    import gymnasium as gym
    import numpy as np
    import stable_baselines3
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dtrl.data.generate import (
        _PURPOSE,
        _env_batch,
        _seed,
        evaluate_actor,
        family_task,
    )
    from dtrl.envs.make import make_env
    from dtrl.tasks import get_family

    gen = exp.data.generator
    task = family_task(get_family(family))
    torch.set_num_threads(1)
    threshold = gen.medium_fraction * task.ref_max_score

    def make():
        # dtrl's env (actions in [-1, 1]) under the family's time limit, which SB3 reads as truncation.
        return gym.wrappers.TimeLimit(make_env(task), task.max_episode_steps)

    # SB3 seeds its envs (env i: seed + i), its action space and its networks from `seed` itself.
    venv = DummyVecEnv([make] * gen.sac_envs)
    model = SAC("MlpPolicy", venv, learning_rate=gen.sac_lr, buffer_size=max_steps + gen.sac_envs,
                learning_starts=gen.sac_start_steps, batch_size=gen.sac_batch_size, tau=gen.sac_tau,
                gamma=gen.sac_gamma, train_freq=1, gradient_steps=max(1, round(gen.sac_envs * gen.sac_utd)),
                ent_coef=f"auto_{gen.sac_init_alpha}", target_entropy="auto",
                policy_kwargs={"net_arch": [gen.sac_hidden, gen.sac_hidden]}, seed=gen.seed, device="cpu",
                verbose=0)
    eval_envs = _env_batch(task, [0] * gen.eval_episodes)
    eval_seeds = [_seed(gen.seed, _PURPOSE["eval"], k) for k in range(gen.eval_episodes)]

    class Policy:  # evaluate_actor's interface over SB3's policy
        def act(self, obs, sample=True, generator=None):
            return model.predict(np.asarray(obs, dtype=np.float32), deterministic=not sample)[0]

    curve: list[list[float]] = []
    found: dict = {}
    t_wall, t_cpu = time.perf_counter(), time.process_time()

    def evaluate(step: int) -> float:
        ret = float(evaluate_actor(Policy(), eval_envs, eval_seeds, sample=gen.eval_stochastic).mean())
        curve.append([step, ret])
        print(f"sb3 {family} step {step}: eval return {ret:.1f} (medium {threshold:.1f})", file=sys.stderr, flush=True)
        return ret

    class Medium(BaseCallback):
        next_eval = gen.eval_every

        def _on_step(self) -> bool:
            step = self.model.num_timesteps
            if step < self.next_eval:
                return True
            self.next_eval = (step // gen.eval_every + 1) * gen.eval_every
            if evaluate(step) >= threshold:
                found.update(sac_steps=step, wall_time_s=time.perf_counter() - t_wall,
                             cpu_time_s=time.process_time() - t_cpu)
                return False
            return True

    evaluate(0)
    model.learn(total_timesteps=max_steps, callback=Medium())
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    return {"library": f"stable-baselines3 {stable_baselines3.__version__}", "reached": bool(found),
            "medium_step": found.get("sac_steps"), "medium_return": curve[-1][1] if found else None,
            "wall_time_s": found.get("wall_time_s", wall), "cpu_time_s": found.get("cpu_time_s", cpu),
            "steps_done": int(model.num_timesteps), "updates": int(model._n_updates), "eval_curve": curve,
            "threshold": threshold}


def _dtrl_run(exp, family: str) -> dict:
    from dtrl.data.generate import train_behaviour

    meta = train_behaviour(exp, family, until="medium")
    med = meta["medium"]
    return {"library": "dtrl", "reached": bool(med["reached"]), "medium_step": med["sac_steps"],
            "medium_return": med["eval_return"], "wall_time_s": med["wall_time_s"], "cpu_time_s": med["cpu_time_s"],
            "steps_done": meta["sac_steps_done"], "updates": meta["sac_updates"], "eval_curve": meta["eval_curve"],
            "threshold": meta["medium_threshold"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", choices=("dtrl", "sb3"), required=True)
    p.add_argument("--family", default="hopper", help="env family (hopper, halfcheetah, walker2d, ...)")
    p.add_argument("-c", "--config", action="append", default=[], help="experiment YAML(s), merged in order")
    p.add_argument("--seed", type=int, default=None, help="data.generator.seed (default: the config's)")
    p.add_argument("--max-steps", type=int, default=None, help="SAC env steps cap (default: data.generator.sac_steps)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = p.parse_args(argv)

    if args.library == "sb3":
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            print('compare_sac.py: Stable-Baselines3 is not installed; pip install -e ".[compare-sac]"',
                  file=sys.stderr)
            return 2
    from dtrl.config.experiment import load_config

    gen_over: dict = {"device": "cpu", "progress": False}
    if args.seed is not None:
        gen_over["seed"] = args.seed
    if args.max_steps is not None:
        gen_over["sac_steps"] = args.max_steps
    results = tempfile.mkdtemp(prefix="dtrl-compare-sac-")
    exp = load_config(args.config or None, {"results": results, "threads": 1, "data": {"generator": gen_over}})
    gen = exp.data.generator
    out = _dtrl_run(exp, args.family) if args.library == "dtrl" else _sb3_run(exp, args.family, gen.sac_steps)
    out.update(family=args.family, seed=gen.seed, sac_envs=gen.sac_envs, batch=gen.sac_batch_size,
               hidden=gen.sac_hidden, eval_every=gen.eval_every, eval_episodes=gen.eval_episodes, cap=gen.sac_steps)
    where = (f"medium ({out['medium_return']:.1f} >= {out['threshold']:.1f}) at {out['medium_step']} env steps"
             if out["reached"] else f"no medium in {out['steps_done']} env steps")
    print(f"{out['library']} {args.family} seed {gen.seed}: {where}; {out['updates']} updates, "
          f"{out['wall_time_s']:.0f} s wall, {out['cpu_time_s']:.0f} CPU-s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
