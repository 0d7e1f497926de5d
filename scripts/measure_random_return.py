"""Measure the uniform-random-policy return of a Gymnasium env: the ref_min_score method in dtrl/tasks.py.

    python scripts/measure_random_return.py Ant-v5 --episodes 100
"""

import argparse

import gymnasium as gym
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("env_id")
    p.add_argument("--episodes", type=int, default=100)
    args = p.parse_args()
    env = gym.make(args.env_id)
    returns = []
    for seed in range(args.episodes):
        env.reset(seed=seed)
        env.action_space.seed(seed)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total += float(r)
            done = term or trunc
        returns.append(total)
    r = np.asarray(returns)
    print(f"{args.env_id}: mean {r.mean():.3f} std {r.std():.3f} over {len(r)} episodes (seeds 0-{len(r) - 1})")


if __name__ == "__main__":
    main()
