"""Training speed in the app against the terminal's, measured in one run.

    python benchmarks/app_speed.py [SCENE] [--data-dir DIR] [--rounds N] [--steps N]

Alternates, ``--rounds`` times: the trainer as ``bnnlab train`` drives it (no telemetry,
no window), then the same scene trained in the real window (a Session and a MainWindow,
redrawing the Training tab as it does for a person). Each measures images per second over
``--steps`` batches after a few warm-up batches, from the wall clock. Prints every round,
the medians and their ratio (app / terminal). Set QT_QPA_PLATFORM=offscreen (or DISPLAY)
for the window.
"""

from __future__ import annotations

import argparse
import statistics
import time


def terminal_rate(scene, data, steps: int, warm: int = 10) -> float:
    from bnnlab.experiment import build_model, make_trainer

    model = build_model(scene, data.dataset.input_shape, data.dataset.num_classes)
    trainer = make_trainer(scene, model, data, telemetry=False)
    t0 = s0 = None
    for snap in trainer:
        if t0 is None and snap.step >= warm:
            t0, s0 = time.perf_counter(), snap.step
        if t0 is not None and snap.step >= s0 + steps:
            break
    trainer.stop()
    return (snap.step - s0) * scene.batch_size / (time.perf_counter() - t0)


def app_rate(app, window, steps: int, warm: int = 10) -> float:
    s = window.session
    s.start()
    t0 = s0 = None
    while True:
        app.processEvents()
        time.sleep(0.002)
        snap = s.latest_snapshot
        if snap is None or s.active_run is None:
            continue
        if t0 is None and snap.step >= warm:
            t0, s0 = time.perf_counter(), snap.step
        if t0 is not None and snap.step >= s0 + steps:
            rate = (snap.step - s0) * s.scene.batch_size / (time.perf_counter() - t0)
            break
    s.stop(wait=True)
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scene", nargs="?", default="larq-mnist-bnn")
    p.add_argument("--data-dir")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()

    import bnnlab.gui  # noqa: F401 - before Qt: see bnnlab/gui/__init__.py
    from PySide6.QtWidgets import QApplication

    from bnnlab.app.session import Session
    from bnnlab.experiment import prepare_data
    from bnnlab.gui.main_window import MainWindow
    from bnnlab.io.scenes import load_preset

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
              f"app {rates['app'][-1]:,.0f} images/s", flush=True)
    t, a = statistics.median(rates["terminal"]), statistics.median(rates["app"])
    print(f"median: terminal {t:,.0f} images/s, app {a:,.0f} images/s, app / terminal = {a / t:.2f}")
    window.close()


if __name__ == "__main__":
    main()
