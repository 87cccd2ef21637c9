"""The one protocol every panel follows, and the page that hosts a panel in a tab.

A panel is a widget with a ``title`` and ``show_focus(focus)``: given a
:class:`bnnlab.app.runs.Focus` (every run, the selected run with its data, model and
twin) it shows what it can and keeps the rest for later. The window calls it with the
newest focus when the panel's tab is visible, no more often than the panel can draw.

A panel that raises shows the error on its page (the other panels keep working) and the
exception goes to ``sys.excepthook``: printed in a terminal, and a failure under pytest-qt.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QLabel, QScrollArea, QStackedWidget, QVBoxLayout, QWidget

from ..app.runs import Focus
from .views.background import LatestOnly
from .views.banner import ErrorBanner

__all__ = ["FitPage", "FitScrollArea", "NotedPanel", "Panel", "PanelPage"]


@runtime_checkable
class Panel(Protocol):
    title: str

    def show_focus(self, focus: Focus) -> None:
        """Show the selected run (or model) and whatever else of ``focus`` the panel draws."""


class FitScrollArea(QScrollArea):
    """A scroll area that gives its widget the whole viewport and scrolls only when the
    viewport is smaller than the widget's minimum size.

    QScrollArea's own resizing (``widgetResizable``) gives a widget whose layout holds
    word-wrapped labels its *preferred* height for the width (``heightForWidth``), so on a
    small screen plots that could shrink were pushed below the fold instead.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(False)

    def setWidget(self, widget: QWidget) -> None:
        super().setWidget(widget)
        widget.installEventFilter(self)
        self.fit()

    def needed_height(self, width: int) -> int:
        """The height the widget needs at ``width`` (word-wrapped labels included)."""
        w = self.widget()
        if w is None:
            return 0
        need = w.minimumSizeHint().expandedTo(w.minimumSize()).height()
        layout = w.layout()
        if layout is not None and layout.hasHeightForWidth():
            need = max(need, layout.minimumHeightForWidth(width))
        return need

    def fit(self) -> None:
        w = self.widget()
        if w is None:
            return
        view = self.maximumViewportSize()  # the viewport without scroll bars
        hint = w.minimumSizeHint().expandedTo(w.minimumSize())
        width = max(view.width(), hint.width())
        need = self.needed_height(width)
        if need > view.height():  # a vertical scroll bar takes its width from the widget
            width = max(view.width() - self.verticalScrollBar().sizeHint().width(), hint.width())
            need = self.needed_height(width)
        w.resize(width, max(view.height(), need))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.fit()

    def eventFilter(self, obj, event) -> bool:
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.fit()
        return super().eventFilter(obj, event)


class FitPage(QWidget):
    """A page whose height for a width is its layout's minimum for that width, not the
    preferred one: a stacked widget passes it on as the panel's minimum height, and the
    preferred height of plots and tables would push them off the view (the scroll area
    scrolls only below the minimum)."""

    def heightForWidth(self, width: int) -> int:
        return self.layout().minimumHeightForWidth(width)


class NotedPanel(QWidget):
    """A panel that computes off the GUI thread and shows a heading over either a centred
    note (what it waits for, or why there is nothing to draw: no empty plots) or its
    content.

    A subclass builds its content (a :class:`FitPage`, so that the panel fits the view),
    then calls :meth:`_frame`; it receives the worker's
    answers in ``_on_result(key, result)`` and ``_on_failed(key, message)``.
    """

    def _frame(self, content: QWidget, heading_style: str = "") -> None:
        """Lay out ``heading``, ``note`` / ``content`` (``pages``) and start ``_worker``."""
        self.heading = QLabel("")
        self.heading.setWordWrap(True)
        self.heading.setTextFormat(Qt.TextFormat.RichText)
        if heading_style:
            self.heading.setStyleSheet(heading_style)
        self.note = QLabel("")
        self.note.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.note.setWordWrap(True)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.note)
        self.pages.addWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.heading)
        layout.addWidget(self.pages, 1)
        self._worker = LatestOnly(self)
        self._worker.finished.connect(self._on_result)
        self._worker.failed.connect(self._on_failed)

    def show_note(self, text: str) -> None:
        """The note instead of the content."""
        self.note.setText(text)
        self.pages.setCurrentIndex(0)

    def show_content(self) -> None:
        self.pages.setCurrentIndex(1)

    def heightForWidth(self, width: int) -> int:
        # Word-wrapped labels give the layout a height-for-width, which a scroll area
        # would honour with the panel's preferred height, taller than the window; -1
        # lets it fit the panel to the view (never below the minimum size).
        return -1

    def _on_result(self, key, result) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _on_failed(self, key, message: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class PanelPage(QWidget):
    """A tab's page: builds its panel the first time it is shown, feeds it, shows its errors.

    The panel sits in a scroll area, so its minimum size never widens the window: on a
    small screen the page scrolls instead.
    """

    def __init__(self, title: str, factory: Callable[[], QWidget], *, heavy: bool = False,
                 parent=None):
        super().__init__(parent)
        self.title = title
        self.heavy = heavy  # many plots: the window feeds it a few times a second at most
        self._factory = factory
        self.panel: QWidget | None = None
        self.error = ErrorBanner()
        self.scroll = FitScrollArea()
        self.scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(2)
        col.addWidget(self.error)
        col.addWidget(self.scroll, 1)
        self._last_error = ""

    def ensure_panel(self) -> QWidget | None:
        """Build the panel now if it is not built (None if building it failed)."""
        if self.panel is None and self._factory is not None:
            factory, self._factory = self._factory, None
            try:
                panel = factory()
            except Exception:  # noqa: BLE001 - shown on the page and reported, see module doc
                self._report("could not be built")
                return None
            if not isinstance(panel, Panel):
                raise TypeError(f"{type(panel).__name__} does not follow the panel protocol")
            self.panel = panel
            self.scroll.setWidget(panel)
        return self.panel

    def show_focus(self, focus: Focus) -> None:
        panel = self.ensure_panel()
        if panel is None:
            return
        try:
            panel.show_focus(focus)
        except Exception:  # noqa: BLE001 - shown on the page and reported, see module doc
            self._report("failed")
        else:
            if self._last_error:
                self._last_error = ""
                self.error.hide()

    def _report(self, what: str) -> None:
        kind, exc, tb = sys.exc_info()
        text = "".join(traceback.format_exception_only(kind, exc)).strip()
        self.error.show_error(f"The {self.title} panel {what}", text)
        self.error.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        if text != self._last_error:  # once per distinct error, not once per frame
            self._last_error = text
            sys.excepthook(kind, exc, tb)
