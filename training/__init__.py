"""Training stages of crforge: deepCR-style networks on an HDF5 training set.

Data loading and augmentation from the HDF5 schema, the mask and inpaint UNets, the
training loop (config, log, metrics and checkpoints under ``runs/<run>/``), evaluation
(ROC, TPR at fixed FPR, inpaint MSE) and the classical baselines to compare against.
"""
