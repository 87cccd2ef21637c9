"""Entry point of the desktop app: ``bnnlab [SCENE.toml]``.

``--measure-stall SECONDS`` (or ``BNNLAB_MEASURE_STALL=SECONDS``) starts training at once,
measures the longest event-loop stall over that many seconds of training, prints it and
quits: a check that training never freezes the window.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bnnlab gui", description="The bnnlab desktop app.")
    p.add_argument("scene", nargs="?",
                   help="a scene (.toml), a preset name, or a model file (.bnn, .h5, .npz)")
    p.add_argument("--data-dir", help="folder with one sub-folder per dataset (e.g. mnist/)")
    p.add_argument("--measure-stall", type=float, metavar="SECONDS",
                   help="train for SECONDS, print the longest event-loop stall, and quit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    if args.measure_stall is None and os.environ.get("BNNLAB_MEASURE_STALL"):
        args.measure_stall = float(os.environ["BNNLAB_MEASURE_STALL"])

    from ..core.kernels import tune_process

    tune_process()
    from PySide6.QtWidgets import QApplication

    from ..app.session import Session
    from .main_window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "bnnlab"])
    app.setApplicationName("bnnlab")
    app.setOrganizationName("bnnlab")
    app.setApplicationDisplayName("bnnlab")
    # Matches the freedesktop entry that ``bnnlab install-desktop`` writes.
    app.setDesktopFileName("bnnlab")
    from ..app.about import version
    from .about import app_icon

    app.setApplicationVersion(version())
    app.setWindowIcon(app_icon())
    session = Session(data_dir=args.data_dir)
    window = MainWindow(session, measure_stall=args.measure_stall is not None)
    window.show()  # before loading anything: the window appears at once
    if args.scene:
        if os.path.exists(args.scene):
            window.open_path(args.scene)  # a scene or a model file, told apart by content
        elif args.scene.endswith(".toml"):
            session.open_scene(args.scene)
        else:
            session.open_preset(args.scene)
    probe = _StallRun(window, args.measure_stall) if args.measure_stall is not None else None
    code = app.exec()
    del probe  # held until here: Qt keeps no reference to a plain Python object's slot
    if not (session.kernels_ready.is_set() and session.runtime_ready.is_set()):
        # Closed while the kernels still compile: a compilation cannot be interrupted, and
        # the interpreter's shutdown would wait for it (seconds to tens of seconds). Every
        # window is closed and every run stopped, and Numba writes each cached kernel with
        # an atomic rename, so ending the process here loses nothing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


class _StallRun:
    """Starts training, and once it has run for the given time reports the stall and quits.

    The count starts at the first snapshot, so kernel compilation and data loading (which
    run in threads too, but are not training) are reported separately.
    """

    def __init__(self, window, seconds: float):
        from PySide6.QtCore import QTimer

        self.window, self.seconds = window, seconds
        window.ask_unsaved = lambda what: "discard"  # a measurement keeps nothing
        self.started = None
        window.session.start()
        self.timer = QTimer(window)
        self.timer.timeout.connect(self._poll)
        self.timer.start(100)

    def _poll(self) -> None:
        import time

        from ..app.runs import RunState

        c, mon = self.window.session, self.window.stall_monitor
        if self.started is None:
            if c.latest_snapshot is not None:
                print(f"before training (warm-up, data, model): longest stall "
                      f"{mon.longest_gap_ms:.1f} ms", flush=True)
                mon.reset()
                self.started = time.monotonic()
            elif c.runs and c.runs[-1].state is RunState.ERROR:
                print("training failed to start:", c.selected.error if c.selected else "", flush=True)
                self.window.close()
            return
        if time.monotonic() - self.started >= self.seconds or not c.busy:
            snap = c.latest_snapshot
            print(f"training {time.monotonic() - self.started:.1f} s, step {snap.step}, "
                  f"{snap.images_per_second:.0f} images/s; event loop: {mon.ticks} ticks, "
                  f"longest gap {mon.longest_gap_ms:.1f} ms (timer interval "
                  f"{mon.interval_ms} ms), p99 {mon.percentile_ms(99):.1f} ms, "
                  f"median {mon.percentile_ms(50):.1f} ms", flush=True)
            self.timer.stop()
            self.window.close()


if __name__ == "__main__":
    raise SystemExit(main())
