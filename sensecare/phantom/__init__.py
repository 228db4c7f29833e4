"""Synthetic chest CT phantoms with ground truth, for training and testing the lesion finder.

>>> from sensecare.phantom import PhantomSpec, LesionSpec, generate_phantom, write_phantom
>>> ph = generate_phantom(PhantomSpec(seed=1, matrix=128, n_slices=40, slice_thickness_mm=5,
...                                   lesions=(LesionSpec("solid", 12, "juxtapleural"),)))
>>> write_phantom(ph, "out/phantom-1")  # doctest: +SKIP

See ``docs/phantoms.md`` for what is modelled and its limits.
"""

from sensecare.phantom.generate import Progress, generate_phantom
from sensecare.phantom.spec import LesionSpec, PhantomSpec, parse_lesions
from sensecare.phantom.truth import LesionTruth, Phantom
from sensecare.phantom.writer import write_phantom

__all__ = [
    "LesionSpec",
    "LesionTruth",
    "Phantom",
    "PhantomSpec",
    "Progress",
    "generate_phantom",
    "parse_lesions",
    "write_phantom",
]
