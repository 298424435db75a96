"""Cannot be imported: it runs code that fails (npfcn check exits 2 and says why)."""
import numpy as np

DATA = np.load("a file the student forgot to ship.npy")
