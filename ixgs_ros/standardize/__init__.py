"""Anatomy-guided radiographic standardization: any C-arm image -> ideal line integral, bone-only line integral
and validity mask (ROS-free, torch, CPU-trainable). See docs/standardization.md.

* :mod:`.frontend` - physics front end (clipped codes, range normalisation, candidate inverse look-up tables);
* :mod:`.model` - the network (U-Net at a fixed working resolution, local affine maps at full resolution);
* :mod:`.weights` - safetensors weights with a JSON record and checksum (never pickle);
* :mod:`.data` - training data: the slab z >= -95 mm of the bundled CT only, path lengths cached;
* :mod:`.augment` - per-epoch anatomy augmentation and training styles;
* :mod:`.train` - the anatomy-weighted loss and the training loop;
* :mod:`.apply` - inference on images and scans.
"""
