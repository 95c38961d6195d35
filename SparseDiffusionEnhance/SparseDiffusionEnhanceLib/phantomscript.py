"""Writes the sample volume: the engine's torso phantom at a simulated 25 % dose, as ``sdenhance demo`` makes it.

Run as a script by the worker's Python (``python phantomscript.py OUTPUT.nrrd``), never imported into Slicer:
numpy and scipy only, no download, no torch.
"""

import sys

import numpy as np
from sdenhance.degrade import low_dose_ct
from sdenhance.demo import SHAPE, SPACING
from sdenhance.io import write_volume
from sdenhance.phantom import torso_phantom

DOSE = 0.25


def main(output: str) -> None:
    phantom = torso_phantom(SHAPE, SPACING)
    noisy = low_dose_ct(phantom.array, DOSE, np.random.default_rng(0), spacing=phantom.spacing)
    write_volume(phantom.with_array(np.clip(np.rint(noisy), -1024, 3071).astype(np.int16)), output, overwrite=True)


if __name__ == "__main__":
    main(sys.argv[1])
