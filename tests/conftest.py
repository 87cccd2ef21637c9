import os
import sys

# Qt needs a display; without one (CI, ssh) the GUI tests run on the offscreen platform.
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
        and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# Importing bnnlab.gui first protects the whole test session if PySide6 6.12 is installed
# on Python < 3.12 (a reference-counting bug; see bnnlab/gui/__init__.py).
try:
    import bnnlab.gui  # noqa: F401
except ImportError:
    pass

# The process-wide kernel tuning that the bnnlab command and the app apply at start.
from bnnlab.core.kernels import tune_process  # noqa: E402

tune_process()


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _collect_qt_garbage_on_the_main_thread(request):
    """After a test that used Qt, collect its garbage here, on the main thread.

    Windows and panels left in reference cycles are otherwise freed by whichever thread
    next triggers a collection. A later test's background job did, in one run: its
    thread destroyed a QObject (holding Qt's object lock) and waited for the GIL, while
    the main thread held the GIL and waited for that lock in another destructor.
    """
    yield
    if "qtbot" in request.fixturenames or "window" in request.fixturenames:
        gc.collect()
