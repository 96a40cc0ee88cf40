"""The adaptive controller: converges to the better arm, is seeded, and round-trips through state_dict."""

import json
import random

from zoo.controller import BanditController


def _run(ctrl, means, rounds, seed=0):
    rng = random.Random(seed)
    ctrl.start(0)
    for step in range(1, rounds + 1):
        ctrl.update(means[ctrl.current] + rng.gauss(0, 0.05), step=step)
    return ctrl


def test_moves_towards_the_better_arm():
    means = [0.0, 0.05, 0.2, 0.1]  # arm 2 (x1.5) improves the metric most
    ctrl = _run(BanditController([0.5, 1.0, 1.5, 2.0], seed=0), means, 60)
    pulls = [sum(1 for t in ctrl.trajectory if t["arm"] == i) for i in range(4)]
    assert ctrl.best_arm() == 2
    assert pulls[2] == max(pulls) and pulls[2] > 60 / 4
    # the later half of the decisions mostly picks the better arm
    late = [t["arm"] for t in ctrl.trajectory[30:]]
    assert late.count(2) / len(late) > 0.5


def test_seeded_and_state_roundtrip():
    means = [0.1, 0.0, 0.05, 0.02]
    a = _run(BanditController([0.5, 1, 1.5, 2], seed=3), means, 10)
    b = BanditController([0.5, 1, 1.5, 2], seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    rng = random.Random(9)
    for step in range(11, 30):
        r = means[a.current] + rng.gauss(0, 0.05)
        assert a.current == b.current
        a.update(r, step)
        b.update(r, step)
    assert a.trajectory == b.trajectory
    c = _run(BanditController([0.5, 1, 1.5, 2], seed=3), means, 10)
    assert c.trajectory[:10] == a.trajectory[:10]


def test_non_finite_reward_is_penalised():
    ctrl = BanditController([1.0, 2.0], seed=0)
    ctrl.start()
    first = ctrl.current
    ctrl.update(float("nan"))
    assert ctrl.sums[first] < 0
