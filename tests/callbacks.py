"""Trainer callbacks shared by the tests."""
from transformers import TrainerCallback


class StopAt(TrainerCallback):
    """Interrupt training after ``step`` optimizer steps (stands in for a killed job)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
