"""Adaptive distillation strength: a bandit that picks the KD-weight multiplier from validation progress.

Every ``interval`` steps of the mixed_distill stage the trainer measures a validation metric, hands the
improvement since the last decision to the controller as the reward of the arm that was in force, and asks for
the next arm. The bandit is discounted UCB1 (Garivier & Moulines, 2011): a reward's weight decays by
``discount`` per decision, because the improvement that any arm earns shrinks as training converges, and plain
UCB1 would otherwise favour whichever arm was tried early. The exploration bonus is scaled by the spread of the
rewards seen, so it needs no hand-set reward scale.

The controller is deterministic given its seed and rewards (every process of a distributed run computes the
same rewards from gathered metrics, so all choose the same arm). ``state_dict`` / ``load_state_dict`` carry it
through checkpoints; ``trajectory`` is what the run logs.
"""

from __future__ import annotations

import math
import random


class BanditController:
    """Discounted UCB1 over KD-weight multipliers.

    Args:
        arms: the multipliers to choose from, e.g. [0.5, 1.0, 1.5, 2.0].
        exploration: scale of the UCB bonus (c).
        discount: per-decision decay of past rewards and counts (1.0 = plain UCB1).
        seed: breaks ties between equally good arms.
    """

    def __init__(self, arms: list[float], exploration: float = 1.0, discount: float = 0.95, seed: int = 0):
        if not arms:
            raise ValueError("BanditController: give at least one arm (KD-weight multiplier).")
        self.arms = [float(a) for a in arms]
        self.exploration = float(exploration)
        self.discount = float(discount)
        self.seed = seed
        self._rng = random.Random(seed)
        self.counts = [0.0] * len(arms)  # discounted pulls
        self.sums = [0.0] * len(arms)  # discounted reward sums
        self.current = 0
        self.started = False
        self.trajectory: list[dict] = []

    @property
    def multiplier(self) -> float:
        """The KD-weight multiplier in force."""
        return self.arms[self.current]

    def _scale(self) -> float:
        rewards = [t["reward"] for t in self.trajectory if t.get("reward") is not None]
        if len(rewards) < 2:
            return max((abs(r) for r in rewards), default=1.0) or 1.0
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
        return std or (abs(mean) or 1.0)

    def select(self) -> int:
        """Index of the next arm: each untried arm once (in a seeded order), then the best discounted UCB."""
        untried = [i for i, n in enumerate(self.counts) if n == 0]
        if untried:
            return self._rng.choice(untried)
        total = sum(self.counts)
        scale = self._scale()
        scores = [
            self.sums[i] / self.counts[i] + self.exploration * scale * math.sqrt(2 * math.log(total) / self.counts[i])
            for i in range(len(self.arms))
        ]
        best = max(scores)
        return self._rng.choice([i for i, s in enumerate(scores) if s >= best - 1e-12])

    def start(self, step: int = 0) -> float:
        """Choose the first arm; returns its multiplier."""
        self.current = self.select()
        self.started = True
        self.trajectory.append({"step": step, "arm": self.current, "multiplier": self.multiplier, "reward": None})
        return self.multiplier

    def update(self, reward: float, step: int = 0, metric: float | None = None) -> float:
        """Credit ``reward`` to the arm in force, choose the next one and return its multiplier."""
        if not self.started:
            self.start(step)
        if not math.isfinite(reward):
            reward = -self._scale()  # a diverging interval is the worst outcome, not a missing one
        self.counts = [c * self.discount for c in self.counts]
        self.sums = [s * self.discount for s in self.sums]
        self.counts[self.current] += 1.0
        self.sums[self.current] += float(reward)
        last = self.trajectory[-1]
        last["reward"] = float(reward)
        if metric is not None:
            last["metric"] = float(metric)
        last["end_step"] = step
        self.current = self.select()
        self.trajectory.append({"step": step, "arm": self.current, "multiplier": self.multiplier, "reward": None})
        return self.multiplier

    def best_arm(self) -> int:
        """The arm with the highest discounted mean reward so far."""
        means = [s / c if c else -math.inf for s, c in zip(self.sums, self.counts)]
        return max(range(len(means)), key=means.__getitem__)

    def state_dict(self) -> dict:
        """JSON-serialisable state (RNG included), for checkpoints."""
        version, internal, gauss = self._rng.getstate()
        return {
            "arms": self.arms,
            "counts": self.counts,
            "sums": self.sums,
            "current": self.current,
            "started": self.started,
            "trajectory": self.trajectory,
            "rng": [version, list(internal), gauss],
        }

    def load_state_dict(self, state: dict) -> None:
        if [float(a) for a in state["arms"]] != self.arms:
            raise ValueError(f"controller checkpoint has arms {state['arms']}; this run uses {self.arms}.")
        self.counts = [float(c) for c in state["counts"]]
        self.sums = [float(s) for s in state["sums"]]
        self.current = int(state["current"])
        self.started = bool(state["started"])
        self.trajectory = [dict(t) for t in state["trajectory"]]
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
