"""How long the app's Bits page takes to show its first maps, once the start-up warm-up
has finished: the page's first visit for an opened model file.

    python benchmarks/bits_first_visit.py MODEL [--data-dir DIR]

Starts the window (offscreen unless a display is set), opens MODEL (a ``.bnn``, ``.h5`` or
``.npz``), waits until the start-up warm-up has ended and the model's test images are
loaded, then shows the Bits page and times until its first unit is explained. To see a
cold start, empty Numba's cache first (``__pycache__/*.nbi`` and ``*.nbc`` under
``bnnlab/``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data-dir")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from bnnlab.core.kernels import tune_process

    tune_process()
    from PySide6.QtWidgets import QApplication

    from bnnlab.app.session import Session
    from bnnlab.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(["bnnlab"])
    t0 = time.monotonic()
    session = Session(data_dir=args.data_dir)
    window = MainWindow(session)
    window.ask_unsaved = lambda what: "discard"
    window.show()
    window.open_path(args.model)

    def spin(done, what):
        end = time.monotonic() + args.timeout
        while not done():
            app.processEvents()
            window._refresh()
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.005)

    spin(lambda: session.kernels_ready.is_set() and session._warm is None
         and session.runs and session.runs[0].prepared is not None, "the warm-up and the data")
    ready = time.monotonic() - t0
    page = window.page("Bits")
    t1 = time.monotonic()
    window.tabs.setCurrentWidget(page)

    def shown():
        window._push_current_tab()
        return page.panel is not None and page.panel.explanation is not None

    spin(shown, "the Bits page")
    wait = time.monotonic() - t1
    print(f"start-up warm-up and data: {ready:.1f} s; Bits page's first maps: {wait:.2f} s",
          flush=True)
    window.close()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
