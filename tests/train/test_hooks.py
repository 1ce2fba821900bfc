"""The loop takes its tools from the caller: hook events in order, and an injected clock that decides time
budgets (no test switch in the training path)."""

from negminer.config import TrainConfig
from negminer.train.trainer import Trainer


class Recorder:
    def __init__(self):
        self.events = []

    def on_step_start(self, trainer, step):
        self.events.append(("start", step))

    def on_step(self, trainer, step):
        self.events.append(("step", step))
        return {"recorded": step}

    def on_save(self, trainer):
        self.events.append(("save", trainer.step))


class FakeClock:
    """Every reading is one second later than the one before."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def cfg(tiny_beir, tmp_path, **kw):
    return TrainConfig(data=str(tiny_beir), out=str(tmp_path / "r"), encoder="static", batch_size=8, lr=0.05,
                       quiet=True, zero_shot=False, **kw)


def test_hook_events_come_in_order_and_rows_carry_what_on_step_returns(tiny_beir, tmp_path):
    rec = Recorder()
    Trainer(cfg(tiny_beir, tmp_path, steps=4, save_every=2), hooks=[rec]).run()
    assert rec.events == [("start", 0), ("step", 1), ("start", 1), ("step", 2), ("save", 2), ("start", 2),
                          ("step", 3), ("start", 3), ("step", 4), ("save", 4)]
    import json

    rows = [json.loads(x) for x in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert [r["recorded"] for r in rows] == [1, 2, 3, 4]


def test_an_injected_clock_decides_the_time_budget(tiny_beir, tmp_path):
    """Each step reads the clock twice (its start and its end, hooks excluded), so a step 'takes' one second:
    a 3.5 s budget stops after the fourth step whatever the machine's speed."""
    m = Trainer(cfg(tiny_beir, tmp_path, steps=100, time_budget=3.5, schedule="constant"), clock=FakeClock()).run()
    assert m["train"]["stopped_by"] == "time_budget" and m["train"]["steps"] == 4
    assert m["train"]["seconds"] == 4.0
