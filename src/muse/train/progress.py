"""The trainer's progress display."""

from __future__ import annotations

import sys


class Progress:
    """A rich progress bar on a terminal; plain log lines otherwise (CI, files, torchrun)."""

    def __init__(self, total: int | None, start: int, enabled: bool, memory: str = "peak"):
        """``memory``: what the records' ``peak_memory_mib`` is, as the log names it."""
        self.enabled, self.memory = enabled, memory
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"), transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def update(self, step: int, loss: float | None = None, record: dict | None = None) -> None:
        if self.bar is not None:
            if loss is not None:
                self._info = f"loss {loss:.4f}"
                if record:
                    self._info += (
                        f"  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s"
                        f"  {self.memory} {record['peak_memory_mib']:,.0f} MiB"
                    )
            self.bar.update(self.task, completed=step, info=getattr(self, "_info", ""))
        elif self.enabled and record:
            print(
                f"step {step:>6}  loss {loss:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s  "
                f"{self.memory} {record['peak_memory_mib']:,.0f} MiB", flush=True,
            )

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        elif self.enabled:
            print(text, flush=True)
