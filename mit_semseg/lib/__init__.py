"""Building blocks shared by models and scripts (synchronised BatchNorm, parallel wrappers)."""
