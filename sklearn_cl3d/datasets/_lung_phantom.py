"""The chest CT phantom of :func:`~sklearn_cl3d.datasets.make_lung_cohort`:
tissue intensities (HU), the voxel canvas with tube rendering, branching
airway and vessel trees, and one subject's volume with its emphysema."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = []

#: Anatomy is designed for a cubic field of view of this size (mm) and scaled
#: to the actual field of view ``shape * spacing``.
_NOMINAL_FOV_MM = 320.0
_HU_AIR = -1000.0
_HU_FAT = -100.0
_HU_SOFT = 40.0
_HU_BONE = 400.0
_HU_BLOOD = 40.0
_HU_AIRWAY_WALL = 0.0
NOISE_HU = 15.0
#: Gaussian blur (voxels) standing for the reconstruction kernel.
_RECON_BLUR_VOXELS = 0.5


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _rotate(vector, axis, angle):
    """Rodrigues rotation of ``vector`` about unit ``axis`` by ``angle`` rad."""
    return (
        vector * np.cos(angle)
        + np.cross(axis, vector) * np.sin(angle)
        + axis * np.dot(axis, vector) * (1.0 - np.cos(angle))
    )


class _Canvas:
    """Voxel grid in nominal millimetres, with tube rendering."""

    def __init__(self, shape, spacing):
        self.shape = tuple(shape)
        spacing = np.asarray(spacing, dtype=np.float64)
        fov = spacing * np.asarray(shape)
        self.factor = fov / _NOMINAL_FOV_MM  # physical mm per nominal mm
        self.step = spacing / self.factor  # voxel size in nominal mm
        self.axes = [
            ((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32)
            for n, s in zip(shape, self.step)
        ]
        self.x, self.y, self.z = np.meshgrid(*self.axes, indexing="ij", sparse=True)
        # Partial-volume width of tube edges: one voxel.
        self.edge = float(np.mean(self.step))

    def _box(self, p0, p1, reach):
        lo = np.minimum(p0, p1) - reach
        hi = np.maximum(p0, p1) + reach
        box = []
        for k in range(3):
            a = self.axes[k]
            i0 = int(np.searchsorted(a, lo[k]))
            i1 = int(np.searchsorted(a, hi[k], side="right"))
            if i1 <= i0:
                return None
            box.append(slice(i0, i1))
        return tuple(box)

    def tube(self, p0, p1, radius, box=None):
        """Occupancy in [0, 1] of a cylinder with round caps, in its box."""
        if box is None:
            box = self._box(p0, p1, radius + 2 * self.edge)
            if box is None:
                return None, None
        x = self.axes[0][box[0]][:, None, None] - p0[0]
        y = self.axes[1][box[1]][None, :, None] - p0[1]
        z = self.axes[2][box[2]][None, None, :] - p0[2]
        d = p1 - p0
        length2 = float(d @ d)
        t = np.clip((x * d[0] + y * d[1] + z * d[2]) / max(length2, 1e-9), 0.0, 1.0)
        dist = np.sqrt((x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2)
        return box, np.clip((radius - dist) / self.edge + 0.5, 0.0, 1.0)


def _branches(rng, start, direction, length, radius, depth, taper):
    """Segments ``(p0, p1, radius)`` of a randomly bifurcating tree."""
    segments = []
    stack = [(np.asarray(start, float), _unit(direction), length, radius, depth)]
    while stack:
        p0, d, length, radius, depth = stack.pop()
        p1 = p0 + d * length
        segments.append((p0, p1, radius))
        if depth == 0 or radius * taper < 0.6:
            continue
        perp = _unit(np.cross(d, rng.standard_normal(3)))
        for sign in (1.0, -1.0):
            angle = sign * np.deg2rad(rng.uniform(22.0, 42.0))
            child = _unit(_rotate(d, perp, angle) + 0.15 * rng.standard_normal(3))
            stack.append(
                (p1, child, length * rng.uniform(0.7, 0.85), radius * taper, depth - 1)
            )
    return segments


def _subject(canvas, rng):
    """One chest phantom: HU volume, lung mask and emphysema fractions."""
    x, y, z = canvas.x, canvas.y, canvas.z
    shape = canvas.shape

    # Body: elliptic cylinder with subcutaneous fat, spine.
    ax = 150.0 * rng.uniform(0.9, 1.06)
    ay = 105.0 * rng.uniform(0.9, 1.1)
    by = rng.uniform(-10.0, 0.0)
    fat = rng.uniform(6.0, 25.0)
    body = (x / ax) ** 2 + ((y - by) / ay) ** 2 < 1.0
    body = np.broadcast_to(body, shape)
    inner = (x / (ax - fat)) ** 2 + ((y - by) / (ay - fat)) ** 2 < 1.0
    inner = np.broadcast_to(inner, shape)
    volume = np.full(shape, _HU_AIR, dtype=np.float32)
    volume[body] = _HU_FAT + rng.normal(0.0, 5.0)
    volume[inner] = _HU_SOFT + rng.normal(0.0, 5.0)
    spine_y = by - ay + fat + 45.0
    vertebra = np.broadcast_to(x**2 + (y - spine_y) ** 2 < 22.0**2, shape)
    canal = np.broadcast_to(x**2 + (y - spine_y + 30.0) ** 2 < 9.0**2, shape)
    volume[vertebra] = _HU_BONE + rng.normal(0.0, 30.0)
    volume[canal] = 20.0

    # Lungs: tapered elliptic cross-sections above a diaphragm dome, minus
    # the heart and the mediastinum.
    scale = rng.uniform(0.88, 1.05)
    z_top = 115.0 * scale
    heart_c = np.array([-25.0, by + 25.0, -45.0]) + rng.normal(0.0, 5.0, 3)
    heart_r = np.array([65.0, 55.0, 55.0]) * rng.uniform(0.9, 1.1)
    heart = (
        ((x - heart_c[0]) / heart_r[0]) ** 2
        + ((y - heart_c[1]) / heart_r[1]) ** 2
        + ((z - heart_c[2]) / heart_r[2]) ** 2
    ) < 1.0
    rib_cage = (x / (ax - fat - 15.0)) ** 2 + ((y - by) / (ay - fat - 15.0)) ** 2 < 1.0
    lungs = []
    for side in (1.0, -1.0):  # right (+x), then left
        cx, cy = side * 0.45 * ax, by - 5.0
        rx, ry = 0.36 * ax * scale, 0.68 * ay * scale
        z_bot = (-95.0 + (10.0 if side > 0 else 0.0)) * scale
        t = np.clip((z_top - z) / (z_top - z_bot), 0.0, None)
        taper = np.sqrt(np.clip(t / 0.35, 1e-6, 1.0))
        q = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        lung = (q < taper**2) & (z < z_top) & (z > z_bot + 45.0 * (1.0 - q))
        lung &= rib_cage & ~heart & (side * x > 14.0)
        lungs.append(lung)
    lung_r, lung_l = lungs
    lung = lung_r | lung_l

    # Parenchyma: subject-specific density, gravity gradient, fine texture.
    base = rng.uniform(-875.0, -830.0)
    gravity = -20.0 * np.clip((y - by) / ay, -1.0, 1.0)  # denser posteriorly
    texture = ndi.gaussian_filter(rng.standard_normal(shape), 1.0) * 25.0
    parenchyma_hu = base + gravity + texture
    volume[lung] = np.broadcast_to(parenchyma_hu, shape)[lung]

    # Airways and vessels.
    structures = np.zeros(shape, dtype=np.float32)
    lung_f = lung.astype(np.float32)
    z_carina = 45.0 * scale
    carina = np.array([0.0, by + 10.0, z_carina])
    trachea = (np.array([0.0, by + 15.0, z_top + 60.0]), carina, 9.0)
    airway_segments = [(trachea, False)]
    vessel_segments = []
    for side in (1.0, -1.0):
        hilum = np.array(
            [side * 38.0, by + 5.0, z_carina - (20.0 if side > 0 else 30.0)]
        )
        airway_segments.append(((carina, hilum, 6.5 if side > 0 else 5.5), False))
        lobes = (
            ((side * 0.4, 0.1, 1.0), 35.0),
            ((side * 1.0, 0.2, -0.1), 30.0),
            ((side * 0.3, -0.2, -1.0), 45.0),
        )
        for direction, length in lobes:
            for seg in _branches(rng, hilum, direction, length, 4.5, 4, 0.72):
                airway_segments.append((seg, True))
            jitter = np.asarray(direction) + 0.2 * rng.standard_normal(3)
            for seg in _branches(
                rng, hilum + (0.0, 8.0, 5.0), jitter, length * 1.1, 5.0, 5, 0.7
            ):
                vessel_segments.append(seg)
    for p0, p1, radius in vessel_segments:
        box, occ = canvas.tube(p0, p1, radius)
        if box is None:
            continue
        occ = occ * lung_f[box]
        volume[box] += occ * (_HU_BLOOD - volume[box])
        structures[box] = np.maximum(structures[box], occ)
    for (p0, p1, radius), clipped in airway_segments:
        wall = max(0.2 * radius, 0.8)
        box, outer = canvas.tube(p0, p1, radius + wall)
        if box is None:
            continue
        _, lumen = canvas.tube(p0, p1, radius, box=box)
        if clipped:
            outer = outer * lung_f[box]
            lumen = lumen * lung_f[box]
        volume[box] += outer * (_HU_AIRWAY_WALL - volume[box])
        volume[box] += lumen * (_HU_AIR - volume[box])
        structures[box] = np.maximum(structures[box], outer)

    # Emphysema: low-attenuation clusters with a regional pattern.
    phenotype = rng.choice(3, p=(0.6, 0.25, 0.15))
    pattern = ((3.0, 1.5, 0.5), (0.5, 1.5, 3.0), (1.0, 1.0, 1.0))[phenotype]
    if rng.random() < 0.3:
        severity = rng.uniform(0.0, 0.01)
    else:
        severity = 0.6 * rng.beta(1.2, 5.0)
    cluster_mm = (5.0, 9.0, 7.0)[phenotype]
    field = ndi.gaussian_filter(
        rng.standard_normal(shape), cluster_mm / canvas.step, mode="wrap"
    )
    parenchyma = lung & (structures < 0.5)
    regions = []
    for side_mask in (lung_r, lung_l):
        zs = np.nonzero(side_mask.any(axis=(0, 1)))[0]
        cuts = np.linspace(zs.min(), zs.max() + 1, 4) if zs.size else np.zeros(4)
        zi = np.arange(shape[2])
        for k in range(3):  # upper, middle, lower
            in_band = (zi >= cuts[2 - k]) & (zi < cuts[3 - k])
            regions.append(side_mask & in_band[None, None, :])
    side_gain = np.exp(rng.normal(0.0, 0.3, size=2))
    weights = np.array(
        [pattern[k] * side_gain[s] for s in range(2) for k in range(3)]
    ) * np.exp(rng.normal(0.0, 0.3, size=6))
    sizes = np.array([r.sum() for r in regions], dtype=np.float64)
    mean_weight = (weights * sizes).sum() / max(sizes.sum(), 1.0)
    wanted = np.clip(severity * weights / max(mean_weight, 1e-12), 0.0, 0.85)
    emphysema = np.zeros(shape, dtype=bool)
    for region, frac, size in zip(regions, wanted, sizes):
        candidates = np.flatnonzero(region & parenchyma)
        n_emph = min(int(round(frac * size)), candidates.size)
        if n_emph == 0:
            continue
        values = field.reshape(-1)[candidates]
        chosen = candidates[np.argpartition(-values, n_emph - 1)[:n_emph]]
        emphysema.reshape(-1)[chosen] = True
    emph_hu = rng.uniform(-995.0, -975.0)
    volume[emphysema] = emph_hu + 0.3 * texture[emphysema]

    volume = ndi.gaussian_filter(volume, _RECON_BLUR_VOXELS)
    volume += rng.normal(0.0, NOISE_HU, size=shape).astype(np.float32)
    np.clip(volume, -1024.0, 3071.0, out=volume)

    regional = np.array(
        [(emphysema & r).sum() / max(r.sum(), 1) for r in regions], dtype=np.float64
    )
    overall = emphysema.sum() / max(lung.sum(), 1)
    return volume.astype(np.float32), lung, overall, regional
