"""Editing the session's scene (open, save, change settings, preview its model) and
saving or opening the whole workspace.

A part of :class:`bnnlab.app.session.Session`, kept apart to keep each module small.
"""

from __future__ import annotations

import os
import warnings

from ..io.scenes import Scene, SceneError, SceneWarning, load_preset, save_scene
from .jobs import PreviewJob
from .opening import OpenError, open_any
from .workspace import WorkspaceError, load_workspace, save_workspace

__all__ = ["SceneEditing"]


class SceneEditing:
    """Scene and workspace methods of the session (uses its ``scene``, ``runs``,
    ``comparisons``, ``_emit``, ``stop``, ``cancel_comparison``, ``_events``)."""

    def set_scene(self, scene: Scene, path: str | None = None) -> None:
        """Make ``scene`` current (stopping any run: its settings no longer apply)."""
        self.stop(wait=True)
        self.scene = scene.copy()
        self.scene_path = path
        self.version += 1
        self._emit("scene_changed", self.scene)
        self.preview_model()

    def open_scene(self, path: str | os.PathLike) -> bool:
        path = os.fspath(path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SceneWarning)
                scene = open_any(path, want="scene")  # a model file is named as such
        except (SceneError, OpenError) as exc:
            self._emit("error", "Cannot open the scene", str(exc))
            return False
        self.set_scene(scene, path)
        notes = [str(w.message) for w in caught if issubclass(w.category, SceneWarning)]
        if notes:
            self._emit("error", "Scene opened with warnings", "\n".join(notes))
        return True

    def open_preset(self, name: str) -> bool:
        try:
            scene = load_preset(name)
        except SceneError as exc:
            self._emit("error", "Cannot open the preset", str(exc))
            return False
        self.set_scene(scene, None)
        return True

    def save_scene(self, path: str | os.PathLike) -> bool:
        path = os.fspath(path)
        try:
            save_scene(self.scene, path)
        except (SceneError, OSError) as exc:
            self._emit("error", "Cannot save the scene", str(exc))
            return False
        self.scene_path = path
        self._emit("scene_changed", self.scene)
        return True

    def update_scene(self, **changes) -> bool:
        """Edit fields of the current scene; invalid values are refused with a message."""
        new = self.scene.copy()
        for key, value in changes.items():
            if not hasattr(new, key):
                raise AttributeError(f"Scene has no field {key!r}")
            setattr(new, key, value)
        if "optimizer" in changes and "optimizer_options" not in changes:
            new.optimizer_options = self._options_for(new)
        try:
            new.validate()
        except SceneError as exc:
            self._emit("error", "Invalid setting", str(exc))
            self._emit("scene_changed", self.scene)  # puts the controls back
            return False
        self.scene = new
        self.version += 1
        self._emit("scene_changed", self.scene)
        self.preview_model()
        return True

    @staticmethod
    def _options_for(scene: Scene) -> dict:
        # Options belong to one optimizer (Adam's epsilon means nothing to SGD): keep them
        # only if the new optimizer accepts them.
        from ..core.optimizers import make_optimizer

        try:
            make_optimizer(scene.optimizer, learning_rate=float(scene.learning_rate),
                           **scene.optimizer_options)
            return dict(scene.optimizer_options)
        except ValueError:
            return {}

    def set_data_dir(self, path) -> None:
        self.data_dir = os.fspath(path) if path else None
        self._data_cache.clear()

    def preview_model(self) -> None:
        """Build the current scene's model in the background, for the summary view."""
        self._preview_tag += 1
        PreviewJob(self._preview_tag, self._events, self.scene).start()

    # ------------------------------------------------------------------ workspaces
    def save_workspace(self, path: str | os.PathLike) -> bool:
        """Write the scene, every run (curves, weights, bit for bit) and every comparison
        over seeds to ``path``."""
        path = os.fspath(path)
        try:
            save_workspace(path, self.scene, self.runs, self.comparisons)
        except (OSError, ValueError) as exc:
            self._emit("error", "Cannot save the workspace", f"{path}: {exc}")
            return False
        for run in self.runs:
            run.saved = True
        for comparison in self.comparisons:
            comparison.saved = True
        self.workspace_path = path
        return True

    def open_workspace(self, path: str | os.PathLike) -> bool:
        """Replace the scene, the runs and the comparisons by a workspace file's (stops a
        live run and cancels a running comparison)."""
        path = os.fspath(path)
        try:
            workspace = load_workspace(path)
        except WorkspaceError as exc:
            self._emit("error", "Cannot open the workspace", str(exc))
            return False
        self.stop(wait=True)
        self.cancel_comparison(wait=True)
        self.runs.clear()
        self.selected = None
        self.comparisons[:] = workspace.comparisons
        self.set_scene(workspace.scene, None)
        for item in workspace.runs:
            if item.opened_path is not None:
                self.open_model(item.opened_path)  # arrives as a run once read again
            else:
                self.add_run(item.run)
        self.selected = self.runs[-1] if self.runs else None
        self.workspace_path = path
        self._changed(runs=True, state=True)
        return True
