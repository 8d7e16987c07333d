"""Analysis of recorded runs: the numpy measures a snapshot is built from (`measures`: PCA, CKA, linear probes,
statistics), and what the readers derive from stored runs (`metrics`, `diagnosis`, `summary`). Numpy-only."""
