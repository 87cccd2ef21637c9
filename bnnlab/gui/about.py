"""Help > About: the version, libraries, kernel CPU features and folders in use."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QScrollArea, QVBoxLayout, QWidget

from ..app.about import about_sections
from ..io.desktop import icon_bytes

__all__ = ["AboutDialog", "app_icon"]


def app_icon() -> QIcon:
    """The application icon, drawn from the packaged SVG."""
    pix = QPixmap()
    pix.loadFromData(icon_bytes(), "SVG")
    return QIcon(pix)


class AboutDialog(QDialog):
    def __init__(self, parent: QWidget | None = None, data_dir: str | None = None):
        super().__init__(parent)
        self.setWindowTitle("About bnnlab")
        self.sections = about_sections(data_dir)
        rows = []
        for title, items in self.sections:
            rows.append(f"<tr><td colspan=2><h3 style='margin:8px 0 2px 0'>{html.escape(title)}"
                        "</h3></td></tr>")
            rows += [f"<tr><td style='padding-right:12px'><b>{html.escape(k)}</b></td>"
                     f"<td>{html.escape(v)}</td></tr>" for k, v in items]
        text = ("<p>An explorer for binarized neural networks: train them live, see how "
                "they learn, export them bit-packed.</p><table>" + "".join(rows) + "</table>")
        self.label = QLabel(text)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        box = QVBoxLayout(self)
        icon = QLabel()
        icon.setPixmap(app_icon().pixmap(48, 48))
        box.addWidget(icon)
        box.addWidget(scroll)
        box.addWidget(buttons)
        self.resize(620, 520)
