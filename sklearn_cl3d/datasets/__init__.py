"""Datasets: synthetic 3D cohorts with known ground truth, and loaders.

- :func:`make_brain_cohort`: synthetic brain T1 MRI built offline from the
  MNI152 templates shipped with nilearn, with a latent ageing process that
  drives brain age, atrophy and a diagnosis, hidden behind shape and site
  nuisances.
- :func:`make_lung_cohort`: synthetic chest CT phantoms in Hounsfield units
  with regional emphysema and an FEV1-like target.
- :func:`load_chest_ct`: load real chest CT the user already has as NIfTI.

All generated data are synthetic; their ``DESCR`` says how they are made.
"""

from ._brain import make_brain_cohort
from ._lung import load_chest_ct, make_lung_cohort

__all__ = ["load_chest_ct", "make_brain_cohort", "make_lung_cohort"]
