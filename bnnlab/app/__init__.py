"""The application layer: what the desktop app knows, without Qt.

The scene being edited, the runs trained from it and their states, twins tied to their
run, results tables and CSV export, model reports, multi-seed comparisons of scenes and
the statistics behind them. The GUI in :mod:`bnnlab.gui` is a view of these objects, and
the command line uses them too; everything here is tested without a display.
"""
