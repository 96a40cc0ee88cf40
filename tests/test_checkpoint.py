"""Pickle-free training checkpoints: exact resume, no pickle written or read, atomic folder writes, clear errors."""

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from zoo.checkpoint import TRAINER_STATE, _encode, latest_checkpoint, load_checkpoint, save_checkpoint


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.embed.weight  # tied: safetensors cannot hold shared storage twice

    def forward(self, ids):
        return self.head(self.norm(self.body(self.embed(ids)))).mean(1)


def _setup():
    torch.manual_seed(0)
    net = _Net()
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in net.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return net, opt, sched


def _steps(net, opt, sched, n):
    """Train n steps on data drawn from all three RNGs (torch, python, numpy); return the losses."""
    losses = []
    for _ in range(n):
        ids = torch.randint(0, 11, (4, 5))
        target = torch.tensor([random.randrange(11) for _ in range(4)])
        scale = float(np.random.rand())
        loss = nn.functional.cross_entropy(net(ids) * (1 + scale), target)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_resume_is_exact_and_never_unpickles(tmp_path, forbid_unpickling):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    net, opt, sched = _setup()
    _steps(net, opt, sched, 3)
    save_checkpoint(tmp_path / "step-3", model=net, optimizer=opt, scheduler=sched, trainer_state={"step": 3})
    expected = _steps(net, opt, sched, 4)

    files = sorted(p.name for p in (tmp_path / "step-3").iterdir())
    assert all(f.endswith((".safetensors", ".json")) for f in files), files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for f in files)
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng.json",
            "rng.safetensors", TRAINER_STATE} <= set(files)  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(tmp_path / "step-3" / "optimizer.safetensors"), "pt") as f:
        assert "optimizer.state.0.exp_avg" in set(f.keys())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3"]  # no temporary folder left behind

    forbid_unpickling("a checkpoint load")
    torch.manual_seed(99), random.seed(99), np.random.seed(99)  # the checkpoint must restore all three
    net2, opt2, sched2 = _setup()
    state = load_checkpoint(tmp_path / "step-3", model=net2, optimizer=opt2, scheduler=sched2)
    assert state["step"] == 3
    assert net2.head.weight is net2.embed.weight  # still tied
    assert isinstance(opt2.param_groups[0]["betas"], tuple)
    assert _steps(net2, opt2, sched2, 4) == expected  # bit for bit
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_save_over_the_same_step_and_latest(tmp_path):
    net, opt, sched = _setup()
    for step in (2, 4, 4):
        save_checkpoint(tmp_path / f"step-{step}", model=net, optimizer=opt, trainer_state={"step": step})
    (tmp_path / "step-9").mkdir()  # incomplete (no trainer_state.json): never picked
    assert latest_checkpoint(tmp_path) == tmp_path / "step-4"
    assert latest_checkpoint(tmp_path / "missing") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import zoo.checkpoint as ck

    net, opt, sched = _setup()
    save_checkpoint(tmp_path / "step-2", model=net, optimizer=opt, scheduler=sched, trainer_state={"step": 2})
    real = ck.save_tree

    def crash(folder, name, obj):
        if name == "scheduler":
            raise KeyboardInterrupt  # killed mid-save
        return real(folder, name, obj)

    monkeypatch.setattr(ck, "save_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "step-4", model=net, optimizer=opt, scheduler=sched, trainer_state={"step": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-2"
    net2, opt2, sched2 = _setup()
    assert load_checkpoint(tmp_path / "step-2", model=net2, optimizer=opt2, scheduler=sched2)["step"] == 2


def test_clear_errors(tmp_path):
    net, opt, sched = _setup()
    old = tmp_path / "step-5"  # what accelerate's save_state left in older runs
    old.mkdir()
    (old / TRAINER_STATE).write_text(json.dumps({"step": 5}))
    for name in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (old / name).write_bytes(b"x")
    with pytest.raises(ValueError, match="checkpoint format"):
        load_checkpoint(old, model=net, optimizer=opt, scheduler=sched)
    good = save_checkpoint(tmp_path / "step-6", model=net, optimizer=opt, scheduler=sched, trainer_state={})
    (good / "optimizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="optimizer.json"):
        load_checkpoint(good, model=net, optimizer=opt, scheduler=sched)
    good = save_checkpoint(tmp_path / "step-7", model=net, optimizer=opt, trainer_state={})
    other = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(good, model=other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="trainer.fn"):
        _encode({"fn": lambda: 0}, "trainer", {})


def test_tagged_json_round_trip():
    from zoo.checkpoint import _decode

    obj = {"a": (1, [2.5, None]), 3: "int key", "t": torch.arange(3), "n": np.arange(4, dtype=np.uint32)}
    tensors = {}
    data = json.loads(json.dumps(_encode(obj, "x", tensors)))
    back = _decode(data, tensors, "x")
    assert back["a"] == (1, [2.5, None]) and back[3] == "int key"
    assert torch.equal(back["t"], obj["t"]) and back["n"].dtype == np.uint32 and back["n"].tolist() == [0, 1, 2, 3]
