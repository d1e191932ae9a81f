"""How good a reconstruction is: the field's metrics, bone-surface accuracy, the RTK baselines and ``ixgs bench``."""
