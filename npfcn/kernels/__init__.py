"""The fast paths: C kernels (``csrc/``) and the Python that feeds them.

Every fast path keeps the contract of a function in ``npfcn.reference`` and is
tested against it; its docstring names which.  Read in this order:

* ``dispatch.py``  - which path each op takes, and every threshold of that choice
* ``gemm.py``      - convolution as matrix products: 1x1, and im2col in bands
* ``bands.py``     - im2col / col2im in C, a band of grid rows at a time
* ``direct.py``    - direct stride-1 convolution for few channels (``csrc/direct.c``)
* ``channel.py``   - the same for 64 output channels, vectors along the channels
                     (``csrc/channel_conv.c``; SegNet-Basic's 7x7 layers)
* ``winograd.py``  - 3x3 convolution by Winograd F(2x2, 3x3) and F(4x4, 3x3)
* ``subpixel.py``  - transposed convolution by sub-pixel phases (FCN's upsampling)
* ``pooling.py``   - max pooling with indices and max unpooling in C
* ``batchnorm.py`` - batch normalisation's passes over the data in C
* ``relu.py``      - ReLU in C

and the machinery under them:

* ``backend.py``   - loads the compiled extension; ``NPFCN_BACKEND`` (c / numpy / auto)
* ``boundary.py``  - the one check every array passes before C
* ``workspace.py`` - reused scratch arrays, one set per thread
* ``threads.py``   - a thread pool running independent bands side by side
"""
