"""The scanner: reconstruction-kernel blur and correlated quantum noise.

Blur is the kernel's modulation transfer function (a Gaussian, plus edge
enhancement for the sharp lung kernel, which is what produces the
overshoot next to vessels on B70f-like images).  Noise is Gaussian with the
kernel's noise power spectrum (NPS): low-pass for soft kernels, peaking near
0.45 cycles/mm for the sharp kernel, shapes fitted to the B40f and B70f
reconstructions of one real chest CT (Lung-PET-CT-Dx A0002).  Its standard
deviation scales as ``1 / sqrt(thickness * dose)`` and grows with patient
size; adjacent slices share noise as much as their slice profiles overlap.

Everything is done in the Fourier domain slice by slice, in chunks, so a
512x512x300 volume needs no more than a few hundred MB beyond its arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy.special import ndtr

__all__ = ["KERNEL_PARAMS", "Kernel", "apply_scanner", "noise_sd"]

HU_MIN, HU_MAX = -1024, 3071
#: Noise SD (HU) for 1 mm slices of a medium adult at the reference dose, standard kernel;
#: about 18 HU at 2.5 mm as measured in fat on LIDC-IDRI-0001 (GE STANDARD, 120 kVp).
SIGMA_1MM = 30.0
SIZE_NOISE = {"small": 0.75, "medium": 1.0, "large": 1.5}


@dataclass(frozen=True)
class Kernel:
    """One reconstruction kernel."""

    name: str  # written to ConvolutionKernel (0018,1210)
    psf_sigma_mm: float
    edge_gain: float
    edge_sigma_mm: float
    noise_rel: float  # noise SD relative to the standard kernel
    nps: Callable[[np.ndarray], np.ndarray]


def _lowpass(fc: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda f: (1 - np.exp(-((f / 0.04) ** 2))) * np.exp(-((f / fc) ** 2))


KERNEL_PARAMS = {
    "soft": Kernel("SOFT", 0.65, 0.0, 1.0, 0.8, _lowpass(0.30)),
    "standard": Kernel("STANDARD", 0.50, 0.0, 1.0, 1.0, _lowpass(0.40)),
    "sharp": Kernel(
        "SHARP", 0.32, 0.5, 0.9, 3.1,
        lambda f: (1 - np.exp(-((f / 0.04) ** 2))) * (0.25 + 0.75 * (f / 0.45) ** 2) * np.exp(-((f / 0.62) ** 4)),
    ),
}


def noise_sd(kernel: str, size: str, thickness: float, dose: float) -> float:
    """Target noise standard deviation (HU) in a uniform region."""
    return SIGMA_1MM * KERNEL_PARAMS[kernel].noise_rel * SIZE_NOISE[size] / math.sqrt(thickness * dose)


def _freq(n: int, d: float, real: bool) -> np.ndarray:
    return sfft.rfftfreq(n, d) if real else sfft.fftfreq(n, d)


def _filters(kernel: Kernel, ny: int, nx: int, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """MTF and noise amplitude filter on the rfft2 half plane; the latter has unit mean power."""
    fy = _freq(ny, pixel, False)[:, None]
    f_full = np.sqrt(fy**2 + _freq(nx, pixel, False)[None, :] ** 2)
    f_half = np.sqrt(fy**2 + _freq(nx, pixel, True)[None, :] ** 2)

    def mtf(f: np.ndarray) -> np.ndarray:
        out = np.exp(-2 * (np.pi * kernel.psf_sigma_mm * f) ** 2)
        if kernel.edge_gain:
            out *= 1 + kernel.edge_gain * (1 - np.exp(-2 * (np.pi * kernel.edge_sigma_mm * f) ** 2))
        return out

    power = kernel.nps(f_full)
    amp = np.sqrt(kernel.nps(f_half) / max(float(power.mean()), 1e-12))
    return mtf(f_half).astype(np.float32), amp.astype(np.float32)


def _z_taps(thickness: float, spacing: float) -> np.ndarray:
    """Noise filter across slices: the slice profile sampled at the slice spacing (unit energy)."""
    sigma = 0.15 * thickness
    reach = math.ceil((thickness / 2 + 2 * sigma) / spacing)
    z = np.arange(-reach, reach + 1) * spacing
    h = ndtr((z + thickness / 2) / sigma) - ndtr((z - thickness / 2) / sigma)
    h = h[h > 1e-3 * h.max()]
    return h / np.sqrt((h**2).sum())


def apply_scanner(clean: np.ndarray, pixel: float, kernel: str, sigma: float, thickness: float, spacing: float,
                  seed: int, progress: Callable[[int], None] | None = None,
                  chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Blur and add noise to ``clean`` (float32, (z, y, x)); returns ``(noisy, blurred)`` int16 HU.

    Noise for slice ``k`` depends only on ``(seed, k)``, so chunking does not change the result.
    Pixels outside the reconstruction circle are set to -1024, as scanners do.
    """
    nz, ny, nx = clean.shape
    k = KERNEL_PARAMS[kernel]
    mtf, amp = _filters(k, ny, nx, pixel)
    taps = _z_taps(thickness, spacing)
    half = (taps.size - 1) // 2
    scale = np.float32(sigma * math.sqrt(ny * nx / 2.0))
    yy, xx = np.ogrid[:ny, :nx]
    outside = (yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2 > (min(nx, ny) / 2) ** 2
    noisy = np.empty(clean.shape, np.int16)
    blurred = np.empty(clean.shape, np.int16)
    white: dict[int, np.ndarray] = {}

    def white_slice(i: int) -> np.ndarray:
        if i not in white:
            g = np.random.default_rng([seed, 0x5CA1, i + 4096])  # i may be a few slices below 0
            w = g.standard_normal((ny, nx // 2 + 1, 2), dtype=np.float32)
            white[i] = w[..., 0] + 1j * w[..., 1]
        return white[i]

    gain = amp * scale
    for k0 in range(0, nz, chunk):
        k1 = min(nz, k0 + chunk)
        spec = sfft.rfft2(clean[k0:k1], workers=-1)
        spec *= mtf
        out = sfft.irfft2(spec, s=(ny, nx), workers=-1)
        blurred[k0:k1] = _to_int16(out, outside)
        for i in range(k1 - k0):
            kk = k0 + i
            n = np.zeros((ny, nx // 2 + 1), np.complex64)
            for j, h in enumerate(taps):
                n += np.float32(h) * white_slice(kk + j - half)
            spec[i] += n * gain
        for old in [w for w in white if w < k1 - half]:
            del white[old]
        out = sfft.irfft2(spec, s=(ny, nx), workers=-1)
        noisy[k0:k1] = _to_int16(out, outside)
        if progress is not None:
            progress(k1 - k0)
    return noisy, blurred


def _to_int16(a: np.ndarray, outside: np.ndarray) -> np.ndarray:
    np.clip(a, HU_MIN, HU_MAX, out=a)
    a = np.rint(a).astype(np.int16)
    a[:, outside] = HU_MIN
    return a
