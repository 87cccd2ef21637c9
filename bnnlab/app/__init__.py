"""The application layer: what the desktop app knows, without Qt.

The scene being edited, the runs trained from it and their states, twins tied to their
run, results tables and CSV export, model reports. The GUI in :mod:`bnnlab.gui` is a view
of these objects; everything here is tested without a display.
"""
