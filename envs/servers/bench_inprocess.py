#!/usr/bin/env python3
"""In-process rollout speed of the games the AgentGym server serves (the same wrappers,
no HTTP), to set against the protocol's speed in envs/benches/agentgym.rs.

One rollout = reset + up to 30 uniformly random admissible actions (seeded). Prints the
median steps per second over --repeats rollouts per game.

    python envs/servers/bench_inprocess.py --repeats 20
"""

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import agentgym_server as s  # noqa: E402

TURNS = 30


def rollout(game, task):
    rng = random.Random(task)
    game.reset(task)
    for t in range(TURNS):
        _, _, done, _, _ = game.step(rng.choice(game.actions))
        if done:
            return t + 1
    return TURNS


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    jvm = s.TwxJvm()
    games = [
        ("textworld-express/coin", lambda: s.TwxGame(jvm, "coin")),
        ("textworld-express/cooking", lambda: s.TwxGame(jvm, "cooking")),
        ("babyai/GoToRedBallGrey", lambda: s.BabyAiGame("GoToRedBallGrey")),
    ]
    for name, make in games:
        game = make()
        rollout(game, 3)  # warm-up (JIT, imports)
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            n = rollout(game, 3)
            rates.append(n / (time.perf_counter() - t0))
        print(f"{name}/in-process: median {statistics.median(rates):.0f} steps/s ({n} steps a rollout)")


if __name__ == "__main__":
    main()
