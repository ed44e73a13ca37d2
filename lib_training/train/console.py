"""Training progress on a terminal: a tqdm bar with the loss when tqdm is installed, plain lines otherwise.
Used by `lora-studio train` and `lora-studio demo`."""

from __future__ import annotations

from . import events as ev


class ConsoleProgress:
    """A tqdm bar when tqdm is installed, plain lines otherwise."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Started):
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=event.total_steps, initial=event.start_step, unit="step")
            except ImportError:
                print(f"Training {event.total_steps} steps on {event.num_train_images} images")
        elif isinstance(event, ev.StepDone):
            if self.bar is not None:
                self.bar.n = event.step
                self.bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}", epoch=event.epoch)
            else:
                print(f"step {event.step}/{event.total_steps} loss {event.loss:.4f} eta {event.eta_s:.0f}s")
        elif isinstance(event, ev.Validated):
            (self.bar.write if self.bar is not None else print)(
                f"validation loss at step {event.step} (epoch {event.epoch}): {event.loss:.5f}")
        elif isinstance(event, (ev.EpochSaved, ev.Message)):
            text = f"saved epoch {event.epoch}: {event.path}" if isinstance(event, ev.EpochSaved) else event.text
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
