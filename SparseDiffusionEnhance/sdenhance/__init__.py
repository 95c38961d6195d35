"""SparseDiffusionEnhance engine: sparse-timestep conditional 3D diffusion for CT, PET and MRI.

Plain Python (torch, MONAI, SimpleITK); no Slicer and no Qt, so it runs from the command line, from a
worker process launched by the Slicer module, and in tests.
"""

__version__ = "0.1.0"
