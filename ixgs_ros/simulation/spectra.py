"""Tube spectra, energy-dependent attenuation of the materials in the scene and the detector's energy response.

Units: energies in keV, fluence in photons per keV (arbitrary overall scale: only the shape matters here),
linear attenuation in 1/mm, thicknesses in mm.

* :func:`tube_spectrum` - spekpy's bremsstrahlung + characteristic spectrum of a tungsten tube behind its
  filtration, cached per (kVp, anode angle, Al, Cu) in memory and optionally on disk (npz), so re-styling
  never calls spekpy twice for the same tube setting.
* :func:`mass_attenuation` - total mass attenuation (cm^2/g, coherent + incoherent + photoelectric, NIST
  data through xraydb's ``mu_elam``) of a material given as element mass fractions; :data:`MATERIALS` holds
  the compositions used here (ICRU-44 soft tissue and cortical bone, water, Ti-6Al-4V, 316L steel, CsI).
* :func:`channel_attenuation` - the coefficients that turn the CT path-length channels into attenuation at
  each energy. The CT's HU scale defines mu at one effective energy (:func:`reference_energy`, where water
  has ``mu_water``); the soft-tissue and bone channels then follow the energy dependence of ICRU soft tissue
  and cortical bone, so the monochromatic image at the reference energy is exactly ``exp(-ideal)``.
* :func:`detector_response` - quantum absorption ``1 - exp(-mu_CsI t)`` of a CsI scintillator; an
  energy-integrating detector weights every absorbed photon by its energy.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["MATERIALS", "Spectrum", "tube_spectrum", "mass_attenuation", "linear_attenuation",
           "reference_energy", "channel_attenuation", "detector_response", "default_cache_dir"]

#: Element mass fractions and density (g/cm^3) of the materials in the simulated scene.
MATERIALS: dict[str, tuple[dict[str, float], float]] = {
    "water": ({"H": 0.111894, "O": 0.888106}, 1.0),
    # ICRU Report 44 adult soft tissue
    "soft_tissue": ({"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003, "S": 0.003,
                     "Cl": 0.002, "K": 0.003}, 1.06),
    # ICRU Report 44 cortical bone
    "cortical_bone": ({"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103,
                       "S": 0.003, "Ca": 0.225}, 1.92),
    # implant alloys: Ti-6Al-4V and 316L stainless steel
    "titanium": ({"Ti": 0.90, "Al": 0.06, "V": 0.04}, 4.43),
    "steel": ({"Fe": 0.655, "Cr": 0.17, "Ni": 0.12, "Mo": 0.025, "Mn": 0.02, "Si": 0.01}, 8.0),
    # thallium-doped CsI scintillator (the dopant does not matter for absorption)
    "csi": ({"Cs": 0.5115, "I": 0.4885}, 4.51),
}


def default_cache_dir() -> Path:
    """``$IXGS_XRAY_CACHE`` or ``~/.cache/ixgs_ros/xray``: where spectra and path lengths are cached."""
    env = os.environ.get("IXGS_XRAY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ixgs_ros" / "xray"


class Spectrum:
    """A photon spectrum: bin centres ``energies`` (keV) and ``fluence`` (photons per bin, any scale)."""

    def __init__(self, energies, fluence, label: str = ""):
        self.energies = np.asarray(energies, dtype=np.float64)
        self.fluence = np.asarray(fluence, dtype=np.float64)
        if self.energies.shape != self.fluence.shape or self.energies.ndim != 1 or self.energies.size == 0:
            raise ValueError("a spectrum needs 1D energies and fluence of the same length")
        if np.any(self.fluence < 0) or not self.fluence.sum() > 0:
            raise ValueError("spectrum fluence must be >= 0 with a positive sum")
        self.label = label

    @classmethod
    def monochromatic(cls, energy_kev: float) -> "Spectrum":
        return cls([float(energy_kev)], [1.0], f"{energy_kev:g} keV")

    @property
    def mean_energy(self) -> float:
        return float(np.sum(self.energies * self.fluence) / np.sum(self.fluence))

    def rebinned(self, step_kev: float) -> "Spectrum":
        """Sum the fluence into bins of ``step_kev`` (fluence-weighted bin energies): fewer energies to sum."""
        if step_kev <= 0 or self.energies.size < 2:
            return self
        idx = np.floor((self.energies - self.energies[0]) / step_kev).astype(int)
        n = idx.max() + 1
        flu = np.bincount(idx, self.fluence, n)
        ew = np.bincount(idx, self.fluence * self.energies, n)
        keep = flu > 0
        return Spectrum(ew[keep] / flu[keep], flu[keep], self.label)

    def trimmed(self, rel: float = 1e-5) -> "Spectrum":
        """Drop bins holding less than ``rel`` of the peak fluence (filtered-out low energies)."""
        keep = self.fluence >= rel * self.fluence.max()
        return Spectrum(self.energies[keep], self.fluence[keep], self.label)


def _spectrum_key(kvp: float, anode_deg: float, al_mm: float, cu_mm: float) -> str:
    return f"w{kvp:.1f}kvp-{anode_deg:.1f}deg-al{al_mm:.3f}-cu{cu_mm:.3f}"


@lru_cache(maxsize=64)
def _spekpy_spectrum(kvp: float, anode_deg: float, al_mm: float, cu_mm: float,
                     cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    key = _spectrum_key(kvp, anode_deg, al_mm, cu_mm)
    path = Path(cache_dir) / "spectra" / f"{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return z["energies"], z["fluence"]
    import spekpy

    s = spekpy.Spek(kvp=float(kvp), th=float(anode_deg), dk=1.0)
    if al_mm > 0:
        s.filter("Al", float(al_mm))
    if cu_mm > 0:
        s.filter("Cu", float(cu_mm))
    k, phi = s.get_spectrum()
    k, phi = np.asarray(k, dtype=np.float64), np.asarray(phi, dtype=np.float64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, energies=k, fluence=phi)
        os.replace(tmp, path)
    return k, phi


def tube_spectrum(kvp: float, al_mm: float = 2.5, cu_mm: float = 0.0, anode_deg: float = 12.0,
                  step_kev: float = 1.0, cache_dir=None) -> Spectrum:
    """Tungsten-anode spectrum at ``kvp`` behind ``al_mm`` aluminium and ``cu_mm`` copper (total
    filtration, inherent included), from spekpy. Settings are rounded (0.5 kV, 0.05 mm Al, 0.01 mm Cu) so
    that sampled styles reuse cached spectra; ``cache_dir`` (None: memory only) keeps them on disk."""
    kvp = round(float(kvp) * 2) / 2
    al_mm = round(float(al_mm) * 20) / 20
    cu_mm = round(float(cu_mm) * 100) / 100
    if not 30.0 <= kvp <= 150.0:
        raise ValueError(f"tube voltage {kvp} kVp is outside 30..150 kVp")
    if al_mm < 0 or cu_mm < 0:
        raise ValueError("filter thicknesses must be >= 0")
    k, phi = _spekpy_spectrum(kvp, float(anode_deg), al_mm, cu_mm,
                              str(cache_dir) if cache_dir is not None else None)
    spec = Spectrum(k, phi, f"{kvp:g} kVp, {al_mm:g} mm Al, {cu_mm:g} mm Cu").trimmed()
    return spec.rebinned(step_kev) if step_kev > 1.0 else spec


@lru_cache(maxsize=256)
def _mass_attenuation(material: str, energies: tuple) -> np.ndarray:
    import xraydb

    fractions, _ = MATERIALS[material]
    ev = np.asarray(energies, dtype=np.float64) * 1000.0
    total = sum(float(w) for w in fractions.values())
    mu = np.zeros_like(ev)
    for element, w in fractions.items():
        mu += (w / total) * np.asarray(xraydb.mu_elam(element, ev, kind="total"), dtype=np.float64)
    return mu


def mass_attenuation(material: str, energies) -> np.ndarray:
    """Mass attenuation coefficient (cm^2/g) of a :data:`MATERIALS` entry at ``energies`` (keV)."""
    if material not in MATERIALS:
        raise ValueError(f"unknown material {material!r}: choose one of {', '.join(MATERIALS)}")
    e = np.atleast_1d(np.asarray(energies, dtype=np.float64))
    return _mass_attenuation(material, tuple(np.round(e, 6).tolist())).copy()


def linear_attenuation(material: str, energies, density: float | None = None) -> np.ndarray:
    """Linear attenuation (1/mm) of a material at its nominal density (or ``density`` g/cm^3)."""
    rho = MATERIALS[material][1] if density is None else float(density)
    return mass_attenuation(material, energies) * rho / 10.0


@lru_cache(maxsize=16)
def reference_energy(mu_water: float = 0.0195) -> float:
    """The energy (keV) at which water attenuates ``mu_water`` (1/mm): the effective energy of the CT's HU
    scale (about 67 keV for 0.0195/mm). Found by bisection on NIST water data (monotone in 20..150 keV)."""
    lo, hi = 20.0, 150.0
    f = lambda e: float(linear_attenuation("water", [e])[0]) - mu_water  # noqa: E731
    if f(lo) < 0 or f(hi) > 0:
        raise ValueError(f"mu_water {mu_water}/mm is outside water's range over 20..150 keV")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def channel_attenuation(energies, mu_water: float = 0.0195) -> tuple[np.ndarray, np.ndarray]:
    """Per-energy coefficients ``(c_soft, c_bone)`` (1/mm per unit relative density) for the path-length
    channels: attenuation at energy E of a ray = ``c_soft[E] * soft + c_bone[E] * bone``.

    ``c_m(E) = mu_water * (mu/rho)_m(E) / (mu/rho)_m(E_ref)``: a voxel of relative density
    ``rho = 1 + HU/1000`` attenuates ``mu_water * rho`` at the reference energy (the CT's calibration) and
    follows the energy dependence of its material (ICRU soft tissue below the bone threshold, cortical bone
    above it). At ``E_ref`` both coefficients equal ``mu_water``."""
    e = np.atleast_1d(np.asarray(energies, dtype=np.float64))
    e_ref = reference_energy(mu_water)
    out = []
    for m in ("soft_tissue", "cortical_bone"):
        out.append(mu_water * mass_attenuation(m, e) / float(mass_attenuation(m, [e_ref])[0]))
    return out[0], out[1]


def detector_response(energies, csi_mm: float) -> np.ndarray:
    """Fraction of photons of each energy absorbed in a CsI layer of ``csi_mm`` (quantum efficiency);
    ``csi_mm <= 0`` means an ideal detector (1 at every energy)."""
    e = np.atleast_1d(np.asarray(energies, dtype=np.float64))
    if csi_mm <= 0:
        return np.ones_like(e)
    return 1.0 - np.exp(-linear_attenuation("csi", e) * float(csi_mm))

