"""Calibrating a stream from the page, in a real Chromium against the real app.

The main test is the whole user path on a real camera: Beijing BRT camera 2's frames play
as a looping video stream (config stream, bundled model); the user captures frames, marks
every head by clicking on the frame where the dataset's annotators put them (also undoing,
deleting, dragging and zooming on the way), saves, calibrates, and then sees the card say it
is calibrated while the stream is counted by its own model; a restart of the server on the
same data keeps it, and "Revert" takes it back. A smaller test checks the editor's logic
(marks.js, editor.js) in the same browser without the data, and the API's errors as the
page shows them.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.browser import serve_app
from tests.fixtures.waiting import wait_until
from tests.test_web import CARD, assert_clean, open_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
]

#: The editor's logic, run in the page (the project has no JS test runner: Chromium is it).
LOGIC_JS = """async () => {
  const { MarkSet } = await import('/static/marks.js');
  const { ZoomView, toCss, toFrame } = await import('/static/editor.js');
  const out = {};
  const m = new MarkSet(360, 640);
  out.add = [m.add([10, 20]), m.add([10.5, 20.5], 3), m.add([100, 100], 3)];
  out.afterAdd = m.points.map((p) => [...p]);
  m.startMove(0); m.move(0, [-5, 700]);  // a drag past the frame's corner stays on it
  out.moved = [...m.points[0]];
  out.undoMove = m.undo(); out.afterUndo = [...m.points[0]];
  out.redo = m.redo(); out.afterRedo = [...m.points[0]];
  out.nearest = [m.nearest([99, 101], 5), m.nearest([50, 50], 5)];
  out.removed = m.remove(1); out.size = m.size; out.dirty = m.dirty;
  m.saved(); out.savedDirty = m.dirty; m.undo(); out.undoneDirty = m.dirty;
  out.body = m.body();
  const z = new ZoomView(360, 640);
  let v = z.view(720, 640);  // a wide box: fit by height, centred across
  out.fit = [v.x, v.y, v.scale];
  const before = toFrame(v, 400, 300);
  z.zoomAt(720, 640, 400, 300, 4);
  v = z.view(720, 640);
  out.zoomed = { scale: v.scale, under: toFrame(v, 400, 300), before };
  out.roundTrip = toCss(v, toFrame(v, 333.3, 222.2));
  z.panBy(720, 640, 1e6, 1e6);  // a wild pan stops at the frame's edge
  v = z.view(720, 640);
  out.panned = [v.x, v.y];
  z.zoomAt(720, 640, 0, 0, 1e-3);  // no zooming out past the whole frame
  out.minZoom = z.zoom;
  return out;
}"""


async def test_editor_logic_marks_undo_zoom(browser_page, live_server) -> None:
    page, log = browser_page
    await open_page(page, live_server)
    out = await page.evaluate(LOGIC_JS)
    assert out["add"] == [0, -1, 1]  # the second click 0.7 px from the first adds nothing
    assert out["afterAdd"] == [[10, 20], [100, 100]]
    assert out["moved"] == [0, 639.9]  # clamped inside: 0 <= x < width, 0 <= y < height
    assert out["undoMove"] and out["afterUndo"] == [10, 20]
    assert out["redo"] and out["afterRedo"] == [0, 639.9]
    assert out["nearest"] == [1, -1]
    assert out["removed"] and out["size"] == 1 and out["dirty"]
    assert not out["savedDirty"] and out["undoneDirty"]  # an undo after saving is a change
    assert out["body"] == {"points": [[0, 639.9], [100, 100]]}
    assert out["fit"] == [180, 0, 1]
    zoomed = out["zoomed"]
    assert zoomed["scale"] == 4 and zoomed["under"] == zoomed["before"]  # zoom about the pointer
    # frame points are kept in 0.1 px steps: at 4x, within 0.2 CSS px
    assert out["roundTrip"] == pytest.approx([333.3, 222.2], abs=0.21)
    assert out["panned"] == [0, 0]  # the frame's top-left corner at the box's
    assert out["minZoom"] == 1
    assert_clean(log, live_server)
