"""A hook that stops a run at a given step, as a kill would (resume tests)."""


class Crash(Exception):
    pass


class CrashAt:
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, step):
        if step == self.step:
            raise Crash
