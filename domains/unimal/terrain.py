"""The terrain tasks of UNIMAL: variable terrain (``vt``, the reference's ``csr``) and obstacles (``obstacle``).

Both tasks stand the robot on one MuJoCo height field that covers the whole corridor. Its elevation data
(``model.hfield_data``) is rewritten in place at every reset from the episode's random generator, so a new
terrain never recompiles the model; each simulation owns a copy of its robot's model for that reason (the
terrain lives in the model, and two simulations of one robot play different terrains).

The height map is the reference's: 10 cells per metre, heights in absolute metres (the floor top is at 1),
rows along y and columns along x. The same array serves the physics (one vertex at each cell centre), the
height-field observation and the fall rule, so what the robot feels is what it sees. Facts and deviations:
docs/terrain.md.

Map layout (cells): a ring of ``GAP_DEPTH`` around everything (what lies beyond reads as a gap, as the reference's
10 m padding does; one cell wide, ``BACK`` cells behind the start), then, for ``obstacle``, a 1 m wall band of height
``WALL_TOP``, then the corridor:
``2 * half_length`` m along x starting at ``x = -start_flat`` and ``2 * half_width`` m across y, centred on y = 0.
"""

from __future__ import annotations

import copy
import math

import attrs
import mujoco
import numpy as np

CELLS_PER_M = 10
FLOOR_TOP = 1.0  # the corridor's flat height: the flat arena's floor top
GAP_DEPTH = -10.0  # what the map reads beyond the corridor (reference HFIELD.GAP_DEPTH)
WALL_TOP = 4.0  # boundary walls in the map (reference: the map is padded with 2 x wall height 2)
Z_MIN, Z_MAX = GAP_DEPTH, WALL_TOP  # the height field's elevation range, fixed so the model never changes
HFIELD_BASE = 1.0  # thickness of the height field below Z_MIN
RING = 1
# Behind the start, where every episode begins, the gap is as deep as the observation reaches (sqrt(40^2 + 40^2) + 1
# cells), so the observation there needs no clamping; elsewhere one ring of cells stands for all that lies beyond.
BACK = 58
WALL_CELLS = 10  # reference: WALL_LENGTH 0.5 half-length -> 1 m
OBS_BOUNDS = (10, 40, 40, 40)  # cells behind, in front, to the right, to the left (reference OBS_SIZE 1,4,4,4 m)


@attrs.frozen
class TerrainTask:
    """One terrain task: the corridor, what is on it, and its termination rules."""

    name: str
    half_length: int  # reference TERRAIN.SIZE[0]
    half_width: int  # reference TERRAIN.SIZE[1]
    stand_height_ratio: float  # falling to this fraction of the original height ends the episode
    walls: bool
    start_flat: int = 3  # half-length of the flat start box around x = 0

    @property
    def wall_cells(self) -> int:
        return WALL_CELLS if self.walls else 0

    @property
    def corridor_shape(self) -> tuple[int, int]:
        return 2 * self.half_width * CELLS_PER_M, 2 * self.half_length * CELLS_PER_M

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.corridor_shape
        pad = RING + self.wall_cells
        return rows + 2 * pad, cols + 2 * pad + BACK - RING

    @property
    def inner(self) -> tuple[slice, slice]:
        """The corridor's cells in the map."""
        rows, cols = self.corridor_shape
        r0, c0 = RING + self.wall_cells, BACK + self.wall_cells
        return slice(r0, r0 + rows), slice(c0, c0 + cols)

    @property
    def col_offset(self) -> int:
        """Map column of x in [0, 0.1): ``col = floor(10 x) + col_offset``."""
        return BACK + self.wall_cells + self.start_flat * CELLS_PER_M

    @property
    def row_offset(self) -> int:
        """Map row of y in [0, 0.1): ``row = floor(10 y) + row_offset``."""
        return RING + self.wall_cells + self.half_width * CELLS_PER_M

    def hfield_geometry(self) -> tuple[tuple[float, float, float, float], tuple[float, float, float]]:
        """(MuJoCo hfield size, geom position): vertex (r, c) sits at the centre of map cell (r, c)."""
        rows, cols = self.shape
        cell = 1.0 / CELLS_PER_M
        x_first = (0.5 - self.col_offset) * cell  # centre of column 0
        y_first = (0.5 - self.row_offset) * cell
        rx, ry = (cols - 1) * cell / 2, (rows - 1) * cell / 2
        return (rx, ry, Z_MAX - Z_MIN, HFIELD_BASE), (x_first + rx, y_first + ry, Z_MIN)

    def near_edge(self, y: float) -> bool:
        """Reference TerminateOnTerrainEdge: within 1 m of the corridor's side."""
        return bool(self.half_width - abs(y) <= 1.0)


TASKS: dict[str, TerrainTask] = {
    # csr.yaml: SIZE [55, 20, 1], START_FLAT 3, no walls, STAND_HEIGHT_RATIO 0.3
    "vt": TerrainTask("vt", half_length=55, half_width=20, stand_height_ratio=0.3, walls=False),
    # obstacle.yaml: SIZE [50, 20, 1], START_FLAT 3, boundary walls, default STAND_HEIGHT_RATIO 0.5
    "obstacle": TerrainTask("obstacle", half_length=50, half_width=20, stand_height_ratio=0.5, walls=True),
}

# vt segments (reference Terrain defaults with csr.yaml); lengths are half-lengths in metres
FLAT_HALF_LENGTHS = (1, 2, 3)
HFIELD_HALF_LENGTHS = (4, 8)
STEP_HALF_LENGTHS = (12, 16)
CURVE_HEIGHTS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)
STEP_HEIGHT = 0.2
NUM_STEPS = 8
RUGGED_CLIPS = (0.2, 0.3)
RUGGED_BAND_ROWS = tuple(range(10, 20))
RUGGED_FREQUENCIES = (10, 15)
SEGMENT_KINDS = ("curve_slope", "steps", "rugged_square")

# obstacle boxes (reference OBJECT defaults): up to 50, half-sizes in metres, 2 m above the floor in the map
NUM_OBSTACLES = 50
OBSTACLE_HALF_SIZES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
OBSTACLE_HEIGHT = 2.0
PLACEMENT_BUFFER = 3 * CELLS_PER_M * 2  # cells kept free at each x end of the corridor
PLACEMENT_TRIES = 10


def _pick(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


def _triangle(t: np.ndarray) -> np.ndarray:
    """A triangle wave from 0 up to 2 and back over each 2 pi (a symmetric sawtooth, shifted up by 1)."""
    phase = np.mod(t / (2 * np.pi), 1.0)
    return 2.0 - 4.0 * np.abs(phase - 0.5)


# corridor rows, corridor columns, and the heights there (one number, or an array that fits the block)
Patch = tuple[slice, slice, "np.ndarray | float"]


def draw_vt(rng: np.random.Generator, task: TerrainTask = TASKS["vt"]) -> tuple[np.ndarray, list[Patch]]:
    """One variable-terrain corridor drawn with ``rng``: a height profile along x (the same on every row) and the
    patches that vary across y (rugged squares). Heights are absolute metres, rounded to millimetres.

    A flat start of ``2 * start_flat`` m, then pairs {flat of 2-6 m, one of curve slope / steps / rugged squares}
    until the corridor is full; a flat piece that would overrun is shortened, an obstacle piece dropped.
    """
    rows, cols = task.corridor_shape
    profile = np.full(cols, FLOOR_TOP)
    patches: list[Patch] = []
    end = 2 * task.start_flat * CELLS_PER_M
    while end < cols:
        kind = _pick(rng, SEGMENT_KINDS)
        end = min(end + 2 * _pick(rng, FLAT_HALF_LENGTHS) * CELLS_PER_M, cols)
        half = _pick(rng, STEP_HALF_LENGTHS if kind == "steps" else HFIELD_HALF_LENGTHS)
        n = 2 * half * CELLS_PER_M
        if end + n > cols:
            continue
        if kind == "curve_slope":
            profile[end:end + n] += np.sin(np.linspace(0.0, np.pi, n)) * _pick(rng, CURVE_HEIGHTS)
        elif kind == "steps":
            up = NUM_STEPS // 2
            levels = [*range(up), *range(up - 2, -1, -1)]  # 0 1 2 3 2 1 0: the top step is twice as long
            widths = [n // NUM_STEPS] * len(levels)
            widths[up - 1] *= 2
            profile[end:end + n] += np.repeat(np.round(np.array(levels) * STEP_HEIGHT, 2), widths)
        else:
            # bands 1-2 m wide across y, each its own clipped triangle wave along x (drawn at once: the most
            # bands a corridor can need, of which the first few that fill it are used)
            most = rows // min(RUGGED_BAND_ROWS) + 1
            widths = np.asarray(RUGGED_BAND_ROWS)[rng.integers(len(RUGGED_BAND_ROWS), size=most)]
            freq = rng.integers(len(RUGGED_FREQUENCIES), size=most)
            clip = np.asarray(RUGGED_CLIPS)[rng.integers(len(RUGGED_CLIPS), size=most)]
            used = int(np.searchsorted(np.cumsum(widths), rows)) + 1
            waves = np.stack([_triangle(np.linspace(0.0, f * np.pi, n)) for f in RUGGED_FREQUENCIES])
            bands = np.round(FLOOR_TOP + np.minimum(waves[freq[:used]], clip[:used, None]), 3)
            patches.append((slice(0, rows), slice(end, end + n), np.repeat(bands, widths[:used], axis=0)[:rows]))
        end += n
    return np.round(profile, 3), patches


def draw_obstacles(rng: np.random.Generator, task: TerrainTask = TASKS["obstacle"]) -> tuple[np.ndarray, list[Patch]]:
    """One obstacle corridor drawn with ``rng``: flat, with up to 50 boxes raised 2 m, none overlapping, none in
    the 6 m at each x end. A box is dropped after 10 placements that overlap others, as in the reference.

    Returns the (flat) profile along x and one patch per box placed.
    """
    rows, cols = task.corridor_shape
    taken = np.zeros((rows, cols), bool)
    patches: list[Patch] = []
    sizes = np.rint(np.asarray(OBSTACLE_HALF_SIZES) * CELLS_PER_M).astype(int)
    half = sizes[rng.integers(len(sizes), size=(NUM_OBSTACLES, 2))]  # (along x, along y) in cells
    tries = (NUM_OBSTACLES, PLACEMENT_TRIES)
    row = rng.integers(half[:, 1:], rows - half[:, 1:], size=tries)
    col = rng.integers(half[:, :1] + PLACEMENT_BUFFER, cols - half[:, :1] - PLACEMENT_BUFFER, size=tries)
    for k, (hc, hr) in enumerate(half.tolist()):
        for r, c in zip(row[k].tolist(), col[k].tolist()):
            block = (slice(r - hr, r + hr), slice(c - hc, c + hc))
            if not taken[block].any():
                taken[block] = True
                patches.append((*block, FLOOR_TOP + OBSTACLE_HEIGHT))
                break
    return np.full(cols, FLOOR_TOP), patches


def corridor_heights(task: TerrainTask, profile: np.ndarray, patches: list[Patch]) -> np.ndarray:
    """The corridor as one (rows x cols) array of heights."""
    rows = task.corridor_shape[0]
    out = np.repeat(np.asarray(profile, np.float64)[None, :], rows, axis=0)
    for rs, cs, values in patches:
        out[rs, cs] = values
    return out


DRAW = {"vt": draw_vt, "obstacle": draw_obstacles}


def _nonuniform(end: int) -> np.ndarray:
    """Integer offsets 0..end, dense near 0 and sparse far away (inverse-transform sampling of an exponential)."""
    p = np.arange(end) / end
    q = -np.log(1.0 - p)
    return np.unique((q / q[-1] * end).astype(int))


def _nonuniform_range(low: int, high: int) -> np.ndarray:
    points = _nonuniform(high)
    if low > 0:
        points = np.concatenate((-_nonuniform(low)[::-1], points))
    return np.unique(points)


def sample_offsets() -> tuple[np.ndarray, np.ndarray]:
    """The height-field observation's sample points as cell offsets from the torso cell, in observation order.

    ``(forward, left)``: ``forward`` along the torso's heading (x cells, -10..40), ``left`` to its left (+y cells,
    -40..40). The order is the reference's: from the leftmost line of points to the rightmost, each line from behind
    to in front. 30 x 47 = 1410 points.
    """
    behind, front, right, left = OBS_BOUNDS
    forward = _nonuniform_range(behind, front)
    rightward = _nonuniform_range(left, right)  # reference row offsets, which grow to the right
    f = np.tile(forward, len(rightward))
    lft = np.repeat(-rightward, len(forward))
    return f.astype(np.float64), lft.astype(np.float64)


SAMPLE_FORWARD, SAMPLE_LEFT = sample_offsets()
HFIELD_OBS_SIZE = len(SAMPLE_FORWARD)
_REACH = int(math.ceil(math.hypot(np.abs(SAMPLE_FORWARD).max(), np.abs(SAMPLE_LEFT).max()))) + 1


def _normalised(heights):
    """Heights in metres as height-field data (0 at Z_MIN, 1 at Z_MAX); float64, cast on assignment."""
    if isinstance(heights, float):
        return (heights - Z_MIN) / (Z_MAX - Z_MIN)
    out = np.subtract(heights, Z_MIN, dtype=np.float64)
    out *= 1.0 / (Z_MAX - Z_MIN)
    return out


class Terrain:
    """The terrain of one simulation: its own copy of the robot's model, whose height field it rewrites."""

    def __init__(self, task: TerrainTask, model: mujoco.MjModel):
        self.task = task
        self.model = copy.copy(model)  # a deep copy: the height field is per simulation
        self.rows, self.cols = task.shape
        if self.model.nhfield != 1 or self.model.hfield_nrow[0] != self.rows or self.model.hfield_ncol[0] != self.cols:
            raise ValueError(f"the model's height field does not match the {task.name} terrain")
        self.data = self.model.hfield_data  # float32 (rows * cols,), normalised to [0, 1] over Z_MIN..Z_MAX
        self.grid = self.data.reshape(self.rows, self.cols)  # a view
        self._scale = np.float32(Z_MAX - Z_MIN)
        self._inner = task.inner
        self.grid[...] = _normalised(GAP_DEPTH)
        if task.walls:
            w = task.wall_cells
            rs, cs = self._inner
            self.grid[rs.start - w:rs.stop + w, cs.start - w:cs.stop + w] = _normalised(WALL_TOP)
        self.patches: list[Patch] = []
        self._profile: np.ndarray | None = None  # the profile in the map now
        self._pattern = np.stack([SAMPLE_FORWARD, SAMPLE_LEFT])  # (2, 1410) cells: forward, left
        self._unturned = np.rint(self._pattern)  # used at reset, where the reference skips the rotation
        self._to_flat = np.array([1.0, float(self.cols)])  # (column, row) offsets -> flat offset

    # terrain ---------------------------------------------------------------------------------------------
    def regenerate(self, rng: np.random.Generator) -> None:
        """Draw a new corridor from ``rng`` and write it into the model's height field."""
        profile, patches = DRAW[self.task.name](rng, self.task)
        inner = self.grid[self._inner]  # a view
        if self._profile is not None and np.array_equal(profile, self._profile):
            # the same profile (always, on obstacle): only the old patches need undoing, not the whole map
            for rs, cs, _ in self.patches:
                inner[rs, cs] = self._profile_data[cs]
        else:
            self._profile, self._profile_data = profile, _normalised(profile).astype(np.float32)
            inner[...] = self._profile_data
        for rs, cs, values in patches:
            inner[rs, cs] = _normalised(values)
        self.patches = patches

    def heights(self) -> np.ndarray:
        """The whole map in metres (rows x cols, float64), for checks and plots."""
        return self.grid.astype(np.float64) * float(self._scale) + Z_MIN

    # lookups ---------------------------------------------------------------------------------------------
    def cell(self, x: float, y: float) -> tuple[int, int]:
        """Map (row, col) under a world point, clamped to the outer ring (where a non-finite point also goes)."""
        if not (math.isfinite(x) and math.isfinite(y)):
            return 0, 0
        r = math.floor(y * CELLS_PER_M) + self.task.row_offset
        c = math.floor(x * CELLS_PER_M) + self.task.col_offset
        return min(max(r, 0), self.rows - 1), min(max(c, 0), self.cols - 1)

    def height_at(self, x: float, y: float) -> float:
        r, c = self.cell(x, y)
        return float(self.grid[r, c]) * float(self._scale) + Z_MIN

    def observe(self, x: float, y: float, heading: float | None) -> np.ndarray:
        """The 1410 heights around (x, y) relative to the height under it (float32), the pattern turned to
        ``heading`` (radians, counter-clockwise from +x) and rounded to cells; None keeps it unturned."""
        r0, c0 = self.cell(x, y)
        if heading is None:
            turned = self._unturned
        else:
            cos, sin = math.cos(heading), math.sin(heading)
            turned = np.array([[cos, -sin], [sin, cos]]) @ self._pattern  # rows: column offsets, row offsets
            np.rint(turned, out=turned)  # half to even, as numpy's around in the reference
        if _REACH <= r0 < self.rows - _REACH and _REACH <= c0 < self.cols - _REACH:
            flat = (self._to_flat @ turned + (r0 * self.cols + c0)).astype(np.intp)
        else:  # near the map's edge: everything beyond reads as the outer ring
            rr = np.clip(turned[1] + r0, 0, self.rows - 1)
            cc = np.clip(turned[0] + c0, 0, self.cols - 1)
            flat = (rr * self.cols + cc).astype(np.intp)
        out = self.data[flat]
        out -= self.data[r0 * self.cols + c0]
        out *= self._scale
        return out


assert BACK >= _REACH, "the gap behind the start must be as deep as the observation reaches"
