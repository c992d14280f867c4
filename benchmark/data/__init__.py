"""The data stage: files on disk → ``Case`` → prepared tensors.

Owns the ISLES 2017 and nnU-Net loaders (:mod:`~benchmark.data.cases`), NIfTI I/O
(:mod:`~benchmark.data.nifti`), the synthetic ISLES-like generator
(:mod:`~benchmark.data.synthetic`) and where its default lives (:mod:`~benchmark.data.defaults`),
preprocessing to the training grid and back (:mod:`~benchmark.data.preprocessing`), a data set's
fingerprint and plan for native preprocessing (:mod:`~benchmark.data.planning`), training patches
(:mod:`~benchmark.data.patches`), and the train/validation split that is made once and saved
(:mod:`~benchmark.data.splits`).
"""
