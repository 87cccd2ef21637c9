"""Training speed in the app against the terminal's, measured in one run.

    python benchmarks/app_speed.py [SCENE] [--data-dir DIR] [--rounds N] [--steps N]

Alternates, ``--rounds`` times: the trainer as ``bnnlab train`` drives it (no telemetry,
no window), then the same scene trained in the real window (a Session and a MainWindow,
redrawing the Training tab as it does for a person, its event loop running). Each
measures images per second over ``--steps`` batches after a few warm-up batches, on the
trainer's clock. Prints every round (with the CPU time the window's own thread used), the
medians and their ratio (app / terminal). Both sides apply the process tuning the entry
points apply. Set QT_QPA_PLATFORM=offscreen (or DISPLAY) for the window. ``--period``
changes the seconds between the window's snapshots, to see what they cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def terminal_rate(scene, data, steps: int, warm: int = 10) -> float:
    """Images/s of the trainer as ``bnnlab train`` drives it, run on a thread that ends
    with it: a thread that started parallel kernels keeps a pool of OpenMP workers for as
    long as it lives, and a second pool (the window's training runs on another thread)
    slows every parallel kernel (see ``bnnlab.core.kernels.threads.keep_serial``)."""
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(_terminal_rate(scene, data, steps, warm)))
    t.start()
    t.join()
    if not out:
        raise RuntimeError("the terminal run failed")
    return out[0]


def _terminal_rate(scene, data, steps: int, warm: int) -> float:
    from bnnlab.experiment import build_model, make_trainer

    model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    trainer = make_trainer(scene, model, data, telemetry=False)
    first = None
    for snap in trainer:
        if first is None and snap.step >= warm:
            first = snap
        if first is not None and snap.step >= first.step + steps:
            break
    trainer.stop()
    return _rate(first, snap, scene.batch_size)


def _rate(first, last, batch_size: int) -> float:
    """Images/s between two snapshots of one run, on the trainer's own clock."""
    return (last.step - first.step) * batch_size / (last.elapsed - first.elapsed)


def app_rate(app, window, steps: int, warm: int = 10, timeout: float = 600.0) -> float:
    """Images/s of a run started in the window, over ``steps`` batches after ``warm``.

    The event loop runs as it does for a person (``exec``, the window's own timers); a
    timer looks at the run ten times a second. Raises RuntimeError if the run fails or
    does not get there within ``timeout`` seconds."""
    from PySide6.QtCore import QEventLoop, QTimer

    from bnnlab.app.runs import RunState

    s = window.session
    s.start()
    loop = QEventLoop()
    seen = {"first": None, "rate": None, "error": None, "cpu0": 0.0, "gui": None}
    began = time.monotonic()

    def look() -> None:
        run = s.active_run or (s.runs[-1] if s.runs else None)
        if run is not None and run.state is RunState.ERROR:
            seen["error"] = f"the run failed: {run.error}"
        elif time.monotonic() - began > timeout:
            seen["error"] = f"no {steps} steps within {timeout:.0f} s"
        snap = s.latest_snapshot
        if seen["error"] is None and snap is not None and s.active_run is not None:
            if seen["first"] is None and snap.step >= warm:
                seen["first"], seen["cpu0"] = snap, time.thread_time()
            elif seen["first"] is not None and snap.step >= seen["first"].step + steps:
                seen["rate"] = _rate(seen["first"], snap, s.scene.batch_size)
                seen["gui"] = (time.thread_time() - seen["cpu0"]) / (snap.elapsed
                                                                    - seen["first"].elapsed)
        if seen["error"] is not None or seen["rate"] is not None:
            loop.quit()

    timer = QTimer()
    timer.timeout.connect(look)
    timer.start(100)
    loop.exec()
    timer.stop()
    s.stop(wait=True)
    if s.runs:  # the next round starts from a window with no curves to draw
        s.remove_run(s.runs[-1])
    if seen["error"] is not None:
        raise RuntimeError(seen["error"])
    app_rate.gui_share = seen["gui"]
    return seen["rate"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scene", nargs="?", default="larq-mnist-bnn")
    p.add_argument("--data-dir")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--period", type=float,
                   help="seconds between the window's snapshots (default: the app's)")
    p.add_argument("--switch-interval", type=float,
                   help="Python's thread switch interval in seconds (default: the app's)")
    args = p.parse_args()

    import bnnlab.gui  # noqa: F401 - before Qt: see bnnlab/gui/__init__.py
    import bnnlab.app.jobs as jobs
    from PySide6.QtWidgets import QApplication

    from bnnlab.app.session import Session
    from bnnlab.core.kernels import tune_process
    from bnnlab.experiment import prepare_data
    from bnnlab.gui.main_window import MainWindow
    from bnnlab.io.scenes import load_preset

    tune_process()  # as both entry points, `bnnlab` and `bnnlab train`, do
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.period is not None:
        jobs.SNAPSHOT_PERIOD = args.period
    print(f"{args.scene}: snapshots every {jobs.SNAPSHOT_PERIOD:g} s in the window, thread "
          f"switch interval {sys.getswitchinterval() * 1e3:g} ms, load {os.getloadavg()[0]:.1f}",
          flush=True)
    scene = load_preset(args.scene)
    data = prepare_data(scene, args.data_dir)
    app = QApplication.instance() or QApplication([])
    session = Session(data_dir=args.data_dir, scene=scene)
    session.kernels_ready.wait()
    window = MainWindow(session)
    window.show()
    terminal_rate(scene, data, 20)  # compile and warm the caches once for both
    rates = {"terminal": [], "app": []}
    for r in range(args.rounds):
        rates["terminal"].append(terminal_rate(scene, data, args.steps))
        rates["app"].append(app_rate(app, window, args.steps))
        print(f"round {r + 1}: terminal {rates['terminal'][-1]:,.0f} images/s, "
              f"app {rates['app'][-1]:,.0f} images/s, "
              f"ratio {rates['app'][-1] / rates['terminal'][-1]:.2f}; the window's thread "
              f"used {100 * app_rate.gui_share:.0f}% of a core, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    t, a = statistics.median(rates["terminal"]), statistics.median(rates["app"])
    print(f"median: terminal {t:,.0f} images/s, app {a:,.0f} images/s, app / terminal = {a / t:.2f}")
    window.close()


if __name__ == "__main__":
    main()
