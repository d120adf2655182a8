"""Progress of long runs (run, explore, conform, real) as a progress bar with its rate
and ETA on stderr (tqdm), only when stderr is a terminal: a pipe, a file or CI sees
nothing of it.

The engines report progress as one line of text (`progress(text)`). A text that ends
in `k/n` (a real mode's crash points) moves the bar to k of n; any other text is shown
next to the bar; an empty text clears the bar before a report line is printed. A run
over several specs also counts them (`advance`).
"""

from __future__ import annotations

import re
import sys

from tqdm import tqdm

_COUNT = re.compile(r"(\d+)/(\d+)$")

# No monitor thread: tqdm starts one for every bar (even a disabled one) unless this is 0,
# and the real modes hold SIGINT/SIGTERM back around mounts and teardowns with a per-thread
# signal mask (`workspace.held_signals`): a second thread would take the signal instead and
# the interrupt would land inside the held block.
tqdm.monitor_interval = 0


class Progress:
    def __init__(self, total: int | None = None, unit: str = "spec") -> None:
        self.enabled = sys.stderr.isatty()
        self.bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                        mininterval=0.2) if self.enabled else None

    def __call__(self, text: str) -> None:
        if self.bar is None:
            return
        if not text:
            self.bar.clear()
            return
        m = _COUNT.search(text)
        if m:
            done, total = int(m.group(1)), int(m.group(2))
            if self.bar.total != total or done < self.bar.n:
                self.bar.reset(total=total)
                self.bar.unit = "crash"
            self.bar.update(done - self.bar.n)
            self.bar.set_description_str(text[: m.start()].strip()[-60:], refresh=False)
        else:
            self.bar.set_postfix_str(text[-60:], refresh=False)
        self.bar.refresh()

    def advance(self) -> None:
        """One more of the run's specs (or workloads) done."""
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["Progress"]
