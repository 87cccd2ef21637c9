"""What the per-layer live panels (latent weights, gradient gating) share."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from ...core.layer_types import is_quantized

__all__ = ["PerLayerPanel", "layer_specs_from_config", "layer_specs_from_snapshot"]

def layer_specs_from_config(config: dict) -> tuple[tuple[str, str, bool], ...]:
    """(name, type, binarizes its input) of each quantized layer of a model config: what
    the per-layer panels lay out before the first snapshot arrives."""
    return tuple((lc.get("name", ""), lc["type"], bool(lc.get("input_quantizer")))
                 for lc in config.get("layers", []) if is_quantized(lc.get("type")))


def layer_specs_from_snapshot(snapshot) -> tuple[tuple[str, str, bool], ...]:
    return tuple((t.name, t.type_name, t.preact_counts is not None) for t in snapshot.layers)


class PerLayerPanel(QWidget):
    """What the per-layer live panels (latent weights, gating) share: plots laid out
    ahead of training, a caption naming the shown run, and staggered updates.

    Subclasses set ``_wanted`` (layer specs), ``_updates`` (a :class:`Staggered`) and
    ``caption`` (a QLabel), and implement ``_sync_layout``.
    """

    # True for a page that shows only what training records (nothing for an opened model).
    training_only = False

    def heightForWidth(self, width: int) -> int:
        # A word-wrapped caption gives the layout a height-for-width, which a scroll area
        # would honour with the panel's preferred height; -1 fits the panel to the view.
        return -1

    def set_layers(self, specs) -> None:
        """Lay the plots out for these (name, type, binary input) layers ahead of training,
        so the first snapshot only fills them in (building six plots takes a few hundred
        ms: better spent before the run than in the middle of it)."""
        self._wanted = tuple(specs)
        if self.isVisible():
            self._sync_layout()

    def flush(self) -> None:
        """Apply the latest snapshot completely now (updates are otherwise spread over
        a few event-loop turns)."""
        self._updates.flush()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._sync_layout()

    def set_caption(self, html: str) -> None:
        """Which run is shown (the panel draws one run at a time)."""
        if html != self.caption.text():
            self.caption.setText(html)

    def show_focus(self, focus) -> None:
        """The selected run's layers and latest snapshot (one run at a time)."""
        run = focus.run
        opened = run.opened if run is not None else None
        # A .bnn keeps no latent weights, and a model opened from a file has no training
        # signals: no plots to fill (empty axes would mislead), a caption says why.
        blank = opened is not None and (not opened.has_latent_weights or self.training_only)
        config = None if blank else focus.model_config
        if config is not getattr(self, "_focus_config", None):
            self._focus_config = config
            self.set_layers(layer_specs_from_config(config) if config else ())
        caption = "" if run is None else (f"Run <b style='color:{run.color}'>{run.title}</b> "
                                          f"({run.state}) · select another run in the list on "
                                          "the left to compare")
        if opened is not None and not opened.has_latent_weights:
            caption = (f"<b style='color:{run.color}'>{run.title}</b>: a .bnn file keeps only "
                       "the signs of the weights, not the latent weights and training signals "
                       "this page shows; open the .npz or .h5 it came from.")
            if opened.model is None:
                caption += f" (The float engine cannot represent it either: {opened.engine_error}.)"
        elif blank:
            caption = (f"<b style='color:{run.color}'>{run.title}</b> was opened from a file, "
                       "not trained here: this page shows what happens during training. "
                       "Continue training it (Evaluate > Continue training…) to see it.")
        self.set_caption(caption)
        self.set_snapshot(run.snapshot if run is not None and not blank else None)
