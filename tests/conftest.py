import os
import sys

# Qt needs a display; without one (CI, ssh) the GUI tests run on the offscreen platform.
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
        and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
