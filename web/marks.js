// The head marks of one frame, with undo and redo: the marking editor's logic without its
// DOM, so it can be tested on its own. Points are [x, y] in the frame's full-resolution
// pixels, 0 <= x < width, 0 <= y < height (what PUT .../marks accepts), in 0.1 px steps.

export const MAX_UNDO = 200;
export const MAX_MARKS = 2000; // limits.MAX_MARKS_PER_FRAME on the server

export class MarkSet {
  constructor(width, height, points = []) {
    this.width = width;
    this.height = height;
    this.points = points.map((p) => this.inside(p));
    this.undoStack = [];
    this.redoStack = [];
    this.changes = 0; // edits since load or save (an undo counts back down)
    this.selected = -1; // the mark Delete removes when the pointer is over none
  }

  // ``p`` moved onto the frame (a drag may end past its edge).
  inside([x, y]) {
    const clamp = (v, size) => Math.round(Math.min(Math.max(v, 0), size - 0.1) * 10) / 10;
    return [clamp(x, this.width), clamp(y, this.height)];
  }

  get size() {
    return this.points.length;
  }

  // Remember the marks as they are, before an edit (one undo step).
  checkpoint() {
    this.undoStack.push(this.points.map((p) => [...p]));
    if (this.undoStack.length > MAX_UNDO) this.undoStack.shift();
    this.redoStack = [];
    this.changes++;
  }

  // The mark nearest to ``p`` within ``radius`` frame px, or -1.
  nearest([x, y], radius) {
    let best = -1;
    let bestDistance = radius;
    this.points.forEach(([px, py], i) => {
      const d = Math.hypot(px - x, py - y);
      if (d <= bestDistance) {
        best = i;
        bestDistance = d;
      }
    });
    return best;
  }

  // A new mark at ``p``; none (-1) when one is already within ``minGap`` frame px (the
  // second click of a double-click) or the frame has as many as the server takes.
  add(p, minGap = 0) {
    if (this.points.length >= MAX_MARKS) return -1;
    const point = this.inside(p);
    const near = this.nearest(point, minGap);
    if (near >= 0) {
      this.selected = near;
      return -1;
    }
    this.checkpoint();
    this.points.push(point);
    this.selected = this.points.length - 1;
    return this.selected;
  }

  // A drag of mark ``i``: ``startMove`` once (the undo step), then ``move`` as it goes.
  startMove(i) {
    this.checkpoint();
    this.selected = i;
  }

  move(i, p) {
    this.points[i] = this.inside(p);
  }

  remove(i) {
    if (i < 0 || i >= this.points.length) return false;
    this.checkpoint();
    this.points.splice(i, 1);
    this.selected = -1;
    return true;
  }

  clear() {
    if (!this.points.length) return false;
    this.checkpoint();
    this.points = [];
    this.selected = -1;
    return true;
  }

  undo() {
    if (!this.undoStack.length) return false;
    this.redoStack.push(this.points);
    this.points = this.undoStack.pop();
    this.changes--;
    this.selected = -1;
    return true;
  }

  redo() {
    if (!this.redoStack.length) return false;
    this.undoStack.push(this.points);
    this.points = this.redoStack.pop();
    this.changes++;
    this.selected = -1;
    return true;
  }

  get dirty() {
    return this.changes !== 0;
  }

  // Saved: what is here now is what the server has.
  saved() {
    this.changes = 0;
  }

  // The body of PUT .../marks.
  body() {
    return { points: this.points.map((p) => [...p]) };
  }
}
